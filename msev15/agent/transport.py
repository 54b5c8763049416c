"""A lean HTTP/1.1 keep-alive transport for the model client.

The openai client still builds the requests (auth, Azure paths, base URL, headers; with a static
key once, see agent/openai_stream.py) and the statuses fail as it fails them; only the bytes on
the wire go through plain asyncio streams here. Profiling a
streamed turn showed about a third of the worker's CPU in the generic transport underneath
(connection-pool probes of every idle socket per request, stream wrappers, a protocol state
machine per chunk); this does the same job for one server at a time at a fraction of that.
The openai SDK's aiohttp backend was measured as the alternative and kept the first token of
100 simultaneous streams 20-33% later (bench/README.md).

What a general client must still do, it does: TLS as httpx builds it (`verify`, `SSL_CERT_FILE`,
`SSL_CERT_DIR`), interim 1xx answers skipped, a cap on open connections and an expiry for idle
ones. Requests that `HTTPS_PROXY`/`HTTP_PROXY` send through a proxy (`NO_PROXY` exempts hosts)
go through httpx's own proxy transport, see `lean_http_client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx2
import openai

from msev15.agent.http_body import Body

_MAX_HEAD = 64 * 1024
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)  # the openai client's
PoolKey = tuple[str, str, int]


class _Connection:
    __slots__ = ("reader", "writer", "reused", "idle_since", "_on_close")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_close: Callable[[], None]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.idle_since = 0.0
        self._on_close: Callable[[], None] | None = on_close

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        """Close the socket and give its slot back, once."""
        self.writer.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class LeanTransport(httpx2.AsyncBaseTransport):
    """Keep-alive connections per (scheme, host, port); a body not read to its end closes its connection.

    `limits` as httpx reads them: at most `max_connections` open, at most `max_keepalive_connections`
    idle, none idle longer than `keepalive_expiry`. At the cap a request waits (up to the pool
    timeout) for a connection another request is done with, handed over without a new handshake.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
        limits: httpx2.Limits = _LIMITS,
    ) -> None:
        self._idle: dict[PoolKey, list[_Connection]] = {}
        self._verify = verify
        self._trust_env = trust_env
        self._ssl: ssl.SSLContext | None = None
        self._cap = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._open = 0  # connections open or being opened
        self._waiters: deque[tuple[PoolKey, asyncio.Future[_Connection | None]]] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        key: PoolKey = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _request_head(request)
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        while True:
            connection = await self._acquire(key, timeouts, request)
            try:
                return await self._exchange(connection, key, head + body, timeouts, request)
            except _StaleConnection:
                connection.close()  # the server had closed it while idle: nothing was processed
            except BaseException:
                connection.close()  # cancelled or failed mid-exchange: the socket and its slot go
                raise

    async def aclose(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                with contextlib.suppress(Exception):
                    connection.close()
        self._idle.clear()

    # the pool

    async def _acquire(
        self, key: PoolKey, timeouts: dict[str, float | None], request: httpx2.Request
    ) -> _Connection:
        """An idle connection, else a new one under the cap, else the first one another request frees."""
        connection = self._checkout(key)
        if connection is not None:
            return connection
        if self._cap is None or self._open < self._cap or (not self._waiters and self._close_one_idle()):
            self._open += 1
        else:
            handed = await self._wait(key, timeouts.get("pool"), request)
            if handed is not None:
                return handed
        return await self._connect(key, timeouts.get("connect"), request)  # on a slot now counted ours

    async def _wait(self, key: PoolKey, limit: float | None, request: httpx2.Request) -> _Connection | None:
        """Wait at the cap: a connection to `key`, or None for a slot to open one on."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(limit):
                return await waiter
        except BaseException as exc:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if waiter.done() and not waiter.cancelled():  # handed over just as the wait ended: pass it on
                handed = waiter.result()
                if handed is None:
                    self._slot_freed()
                else:
                    self._checkin(key, handed)
            if isinstance(exc, TimeoutError):
                raise httpx2.PoolTimeout("no connection became free in time", request=request) from None
            raise

    def _slot_freed(self) -> None:
        """A connection closed (or never opened): its slot goes to the first waiting request, if any."""
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def _checkout(self, key: PoolKey) -> _Connection | None:
        idle = self._idle.get(key)
        oldest = time.monotonic() - self._expiry if self._expiry is not None else float("-inf")
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closing
            if connection.usable() and connection.idle_since >= oldest:
                connection.reused = True
                return connection
            connection.close()
        return None

    def _checkin(self, key: PoolKey, connection: _Connection) -> None:
        if not connection.usable():
            connection.close()
            return
        for entry in self._waiters:
            if entry[0] == key and not entry[1].done():  # a request waits at the cap for this server
                self._waiters.remove(entry)
                connection.reused = True
                entry[1].set_result(connection)
                return
        if self._waiters or (self._max_idle is not None and self._idle_count() >= self._max_idle):
            connection.close()  # its slot goes to a request waiting for another server, or the pool is full
            return
        connection.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(connection)
        if self._expiry is not None and self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._expiry, self._close_expired)

    def _idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def _close_expired(self) -> None:
        """Close idle connections past their expiry (each list oldest first); re-arm while any stay."""
        self._sweep = None
        assert self._expiry is not None
        oldest = time.monotonic() - self._expiry
        for idle in self._idle.values():
            while idle and idle[0].idle_since < oldest:
                idle.pop(0).close()
        if self._idle_count():
            self._sweep = asyncio.get_running_loop().call_later(self._expiry, self._close_expired)

    def _close_one_idle(self) -> bool:
        """At the cap, an idle connection to another server gives way to a request that needs one now."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return True
        return False

    async def _connect(self, key: PoolKey, limit: float | None, request: httpx2.Request) -> _Connection:
        scheme, host, port = key
        try:
            context: ssl.SSLContext | None = None
            if scheme == "https":
                if self._ssl is None:  # built on first use: a TLS context costs ~30 ms of CPU
                    self._ssl = httpx2.create_ssl_context(verify=self._verify, trust_env=self._trust_env)
                context = self._ssl
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None, limit=_MAX_HEAD
                )
        except BaseException as exc:
            self._slot_freed()
            if isinstance(exc, TimeoutError):
                raise httpx2.ConnectTimeout(
                    f"connecting to {host}:{port} timed out", request=request
                ) from None
            if isinstance(exc, OSError):
                raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}", request=request) from exc
            raise
        return _Connection(reader, writer, self._slot_freed)

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
                while True:
                    raw_head = await reader.readuntil(b"\r\n\r\n")
                    status, reason, headers, version = _parse_head(raw_head, request)
                    if not 100 <= status < 200 or status == 101:
                        break  # 100 Continue, 103 Early Hints: interim, the answer follows
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
        except httpx2.RemoteProtocolError:
            connection.close()
            raise
        lowered = {name.lower(): value for name, value in headers}
        keep_alive = version == b"HTTP/1.1" and lowered.get(b"connection", b"").lower() != b"close"
        if request.method == "HEAD" or status in (204, 304):
            framing: tuple[str, int] = ("empty", 0)
        elif status == 101:
            framing, keep_alive = ("empty", 0), False  # never asked for: the connection is not HTTP anymore
        elif b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            framing = ("chunked", 0)
        elif b"content-length" in lowered:
            framing = ("length", int(lowered[b"content-length"]))
        else:
            framing = ("close", 0)
            keep_alive = False

        def release(complete: bool) -> None:
            if complete and keep_alive:
                self._checkin(key, connection)
            else:
                connection.close()  # unread bytes would corrupt the next response on this connection

        stream = Body(connection.reader, framing, timeouts.get("read"), request, release)
        return httpx2.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": version, "reason_phrase": reason},
        )


class _StaleConnection(Exception):
    """A pooled connection turned out closed before any response byte: safe to retry once fresh."""


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


class _LeanClient(openai.DefaultAsyncHttpxClient):
    """The openai client's default httpx client whose direct transport is the lean one.

    httpx builds the direct transport and one transport per proxy from the environment with
    these two hooks (the SDK's own aiohttp client does the same): overriding only the first
    keeps `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` on httpx's proxy transports and `NO_PROXY`
    hosts on the lean one. Passing `transport=` instead would switch environment proxies off.
    """

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx2.Limits = _LIMITS,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> httpx2.AsyncBaseTransport:
        return transport or LeanTransport(verify=verify, trust_env=trust_env, limits=limits)


def lean_http_client(**kwargs: Any) -> httpx2.AsyncClient:
    """The openai client's default httpx client (its limits and timeouts unless given), lean underneath."""
    client: httpx2.AsyncClient = _LeanClient(**kwargs)
    return client
