"""Local stand-ins for production's services: the real bd, a dolt sql-server, BeadBoard."""
