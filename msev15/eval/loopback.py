"""Serve an ASGI app under real Hypercorn on a free 127.0.0.1 port, inside the caller's event loop.

The evaluation serves the bundled MCP catalog this way (one per trial); the tests serve their
apps and stand-in servers with it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets


class _BoundConfig(Config):
    """Hypercorn config that listens on a socket we already bound (no free-port race)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def create_sockets(self) -> Sockets:
        return Sockets(secure_sockets=[], insecure_sockets=[self._sock], quic_sockets=[])


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_on_loopback(app: Any, port: int = 0, graceful_timeout: float = 1.0) -> AsyncIterator[int]:
    """Yield the port once the server accepts connections; shut it down on exit."""
    sock = bound_socket(port=port)
    actual = sock.getsockname()[1]
    config = _BoundConfig(sock)
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield actual
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=graceful_timeout + 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()
