"""Free TCP ports on 127.0.0.1 for the real services tests start (FLARE, Orthanc)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
