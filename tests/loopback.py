"""What tests that start servers share: a free port on 127.0.0.1 (servers bind nowhere else)."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
