"""Free TCP ports on 127.0.0.1 for the clusters the harness starts."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (bound to port 0, then
    released; a tiny race with other programs is accepted)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
