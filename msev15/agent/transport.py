"""A lean HTTP/1.1 keep-alive transport for the model client.

The openai client still builds every request (auth, Azure paths, base URL, headers) and parses
every status; only the bytes on the wire go through plain asyncio streams here. Profiling a
streamed turn showed about a third of the worker's CPU in the generic transport underneath
(connection-pool probes of every idle socket per request, stream wrappers, a protocol state
machine per chunk); this does the same job for one server at a time at a fraction of that.
Proxies configured in the environment still go through the client's own proxy transports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx2

_MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024
PoolKey = tuple[str, str, int]


class _Connection:
    __slots__ = ("reader", "writer", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class LeanTransport(httpx2.AsyncBaseTransport):
    """Keep-alive connections per (scheme, host, port); a body not read to its end closes its connection."""

    def __init__(self, max_idle_per_host: int = 100, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._max_idle = max_idle_per_host
        self._ssl = ssl_context

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        key: PoolKey = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _request_head(request)
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        while True:
            connection = self._checkout(key) or await self._connect(key, timeouts.get("connect"), request)
            try:
                return await self._exchange(connection, key, head + body, timeouts, request)
            except _StaleConnection:
                connection.close()  # the server had closed it while idle: nothing was processed

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                with contextlib.suppress(Exception):
                    connection.close()
        self._idle.clear()

    def _checkout(self, key: PoolKey) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                connection.reused = True
                return connection
            connection.close()
        return None

    def _checkin(self, key: PoolKey, connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if connection.usable() and len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.close()

    async def _connect(self, key: PoolKey, limit: float | None, request: httpx2.Request) -> _Connection:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx2.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None, limit=_MAX_HEAD
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}", request=request) from None
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        key: PoolKey,
        payload: bytes,
        timeouts: dict[str, float | None],
        request: httpx2.Request,
    ) -> httpx2.Response:
        reader, writer = connection.reader, connection.writer
        try:
            writer.write(payload)
            async with asyncio.timeout(timeouts.get("write")):
                await writer.drain()
            async with asyncio.timeout(timeouts.get("read")):
                raw_head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            connection.close()
            raise httpx2.ReadTimeout("the server did not answer in time", request=request) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            partial = getattr(exc, "partial", b"")
            if connection.reused and not partial:
                raise _StaleConnection from None
            connection.close()
            raise httpx2.RemoteProtocolError("the server closed the connection", request=request) from None
        except asyncio.LimitOverrunError:
            connection.close()
            raise httpx2.RemoteProtocolError("response head too large", request=request) from None
        status, reason, headers, version = _parse_head(raw_head, request)
        lowered = {name.lower(): value for name, value in headers}
        keep_alive = version == b"HTTP/1.1" and lowered.get(b"connection", b"").lower() != b"close"
        if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            framing: tuple[str, int] = ("empty", 0)
        elif b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            framing = ("chunked", 0)
        elif b"content-length" in lowered:
            framing = ("length", int(lowered[b"content-length"]))
        else:
            framing = ("close", 0)
            keep_alive = False
        stream = _Body(self, key, connection, framing, keep_alive, timeouts.get("read"), request)
        return httpx2.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": version, "reason_phrase": reason},
        )


class _StaleConnection(Exception):
    """A pooled connection turned out closed before any response byte: safe to retry once fresh."""


class _Body(httpx2.AsyncByteStream):
    def __init__(
        self,
        transport: LeanTransport,
        key: PoolKey,
        connection: _Connection,
        framing: tuple[str, int],
        keep_alive: bool,
        read_timeout: float | None,
        request: httpx2.Request,
    ) -> None:
        self._transport = transport
        self._key = key
        self._connection: _Connection | None = connection
        self._framing = framing
        self._keep_alive = keep_alive
        self._timeout = read_timeout
        self._request = request
        self._complete = framing[0] == "empty"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._connection is None or self._complete:
            return
        reader = self._connection.reader
        kind, remaining = self._framing
        try:
            if kind == "length":
                while remaining > 0:
                    async with asyncio.timeout(self._timeout):
                        data = await reader.read(min(remaining, _READ_SIZE))
                    if not data:
                        raise httpx2.RemoteProtocolError("the body ended early", request=self._request)
                    remaining -= len(data)
                    yield data
            elif kind == "chunked":
                while True:
                    async with asyncio.timeout(self._timeout):
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                                pass  # trailers
                            break
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            else:
                while True:
                    async with asyncio.timeout(self._timeout):
                        data = await reader.read(_READ_SIZE)
                    if not data:
                        break
                    yield data
            self._complete = True
        except TimeoutError:
            raise httpx2.ReadTimeout("the server stopped sending", request=self._request) from None
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            raise httpx2.RemoteProtocolError("the body broke off", request=self._request) from None
        finally:
            self._release()

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete and self._keep_alive:
            self._transport._checkin(self._key, connection)
        else:
            connection.close()  # unread bytes would corrupt the next response on this connection


def _request_head(request: httpx2.Request) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode() + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in request.headers.raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes, request: httpx2.Request) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    try:
        status_line, *header_lines = raw[:-4].split(b"\r\n")
        version, code, *rest = status_line.split(b" ", 2)
        headers = []
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip(), value.strip()))
        return int(code), rest[0] if rest else b"", headers, version
    except ValueError:
        raise httpx2.RemoteProtocolError("malformed response head", request=request) from None


def lean_http_client(**kwargs: Any) -> Any:
    """The openai client's default httpx client, on the lean transport."""
    import openai

    return openai.DefaultAsyncHttpxClient(transport=LeanTransport(), **kwargs)
