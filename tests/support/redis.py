"""Where the tests' Redis is, and whether it answers (for fixtures wider than the session ``redis_url``)."""

from __future__ import annotations

import os
import socket
import urllib.parse

REDIS_URL = os.environ.get("CONTEXT_STORE_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_up(url: str) -> bool:
    u = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
