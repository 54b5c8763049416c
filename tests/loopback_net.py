"""Loopback stand-ins for the network between the service and its model server.

A relay that counts the connections the client opens (optionally terminating TLS in front of a
plain server) and an HTTP CONNECT proxy. Both only ever connect to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Tally:
    connections: int = 0  # accepted so far
    open: int = 0  # open right now
    peak: int = 0  # most open at once
    targets: list[str] = field(default_factory=list)  # CONNECT targets (the proxy only)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def opened(self, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.writers.add(writer)

    def closed(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        self.writers.discard(writer)

    def drop_all(self) -> None:
        """Close every client connection, as a server does with idle keep-alive connections."""
        for writer in list(self.writers):
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _join(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def relay(target_port: int, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, Tally]]:
    """Yield (port, tally) of a relay to 127.0.0.1:target_port; with `tls`, it is the TLS end."""
    tally = Tally()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tally.opened(writer)
        try:
            await _join(reader, writer, target_port)
        finally:
            tally.closed(writer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    async with _serving(server, tally):
        yield server.sockets[0].getsockname()[1], tally


@contextlib.asynccontextmanager
async def connect_proxy() -> AsyncIterator[tuple[int, Tally]]:
    """Yield (port, tally) of an HTTP proxy that only tunnels (CONNECT), always to 127.0.0.1."""
    tally = Tally()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tally.opened(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method != b"CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            tally.targets.append(target.decode())
            port = int(target.rsplit(b":", 1)[1])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _join(reader, writer, port)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            tally.closed(writer)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with _serving(server, tally):
        yield server.sockets[0].getsockname()[1], tally


@contextlib.asynccontextmanager
async def _serving(server: asyncio.Server, tally: Tally) -> AsyncIterator[None]:
    try:
        yield
    finally:
        tally.drop_all()
        server.close()
        await server.wait_closed()
