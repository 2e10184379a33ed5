"""Loopback ports for the local services and the control plane."""

import socket


def free_port() -> int:
    """A port nothing listens on right now (another process may still take it first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
