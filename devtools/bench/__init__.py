"""`make bench`: the original configuration and ours side by side, real bd, loopback agent."""
