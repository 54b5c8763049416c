"""Bounded asyncio load clients: keep-alive HTTP request loops, SSE streams and WebSocket streams.

Raw asyncio streams for HTTP (a Python client must stay far cheaper than the server it measures);
the `websockets` package for WebSockets. Every loop stops by itself: by duration or by timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from websockets.asyncio.client import connect as ws_connect

HOST = "127.0.0.1"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# Plain request/response ---------------------------------------------------------------------


def http_request(
    method: str,
    path: str,
    port: int,
    body: bytes = b"",
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "User-Agent: msev15-bench"]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        head.append("Connection: close")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        body = await reader.read()
        return status, body, False
    return status, body, headers.get("connection", "").lower() != "close"


@dataclass
class LoopResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def merge(self, other: LoopResult) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.elapsed += other.elapsed

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def request_loop(
    port: int,
    make: Callable[[int], bytes],
    connections: int,
    duration: float,
    expect: int = 200,
    max_requests: int | None = None,
) -> LoopResult:
    """`connections` keep-alive clients send `make(i)` back to back for `duration` seconds."""
    result = LoopResult()
    counter = itertools.count()
    deadline = time.perf_counter() + duration

    async def client() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            i = next(counter)
            if max_requests is not None and i >= max_requests:
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                assert reader is not None
                started = time.perf_counter()
                writer.write(make(i))
                status, _, keep = await _read_response(reader)
                if status == expect:
                    result.latencies.append(time.perf_counter() - started)
                else:
                    result.errors += 1
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(connections))), duration + 30)
    result.elapsed = time.perf_counter() - started
    return result


# Streams --------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    completed: bool = False
    first_token: float | None = None  # seconds from connect to the first token event
    events: int = 0  # token events received
    tokens: int = 0  # model tokens those events carried (coalescing puts several in one)
    finished_at: float = 0.0
    status: int = 0  # the HTTP status (SSE); 0 when none arrived
    error: str = ""  # the `code` of an `error` event, or the HTTP status's error code


def _account(result: StreamResult, payload: bytes | str, started: float) -> bool:
    """Count one event; True when it ends the stream."""
    event = orjson.loads(payload)
    kind = event.get("type")
    if kind == "token":
        if result.first_token is None:
            result.first_token = time.perf_counter() - started
        result.events += 1
        result.tokens += len(event.get("content", "").split())
        return False
    if kind in ("done", "error"):
        result.completed = kind == "done"
        result.error = "" if kind == "done" else str(event.get("code", "error"))
        result.finished_at = time.perf_counter()
        return True
    return False


async def sse_stream(port: int, request: bytes) -> StreamResult:
    """One SSE stream on a fresh connection, read to its `done`/`error` event."""
    result = StreamResult()
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        result.status = int(head.split(b" ", 2)[1])
        if result.status != 200:
            result.error = _error_code(head, await _rest(reader, head))
            return result
        chunked = b"chunked" in head.lower()
        buffer = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    return result
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return result
                buffer += data
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                data_at = block.find(b"data: ")  # after the event's `id:` line
                if data_at >= 0 and _account(result, block[data_at + 6 :], started):
                    return result
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return result
    finally:
        if writer is not None:
            writer.close()


async def _rest(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body of a non-streamed reply (the error), read with a short bound."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            with contextlib.suppress(Exception):
                return await asyncio.wait_for(reader.readexactly(int(line.split(b":")[1])), 2)
    return b""


def _error_code(head: bytes, body: bytes) -> str:
    status = head.split(b" ", 2)[1].decode()
    try:
        code = orjson.loads(body).get("code")
    except (orjson.JSONDecodeError, AttributeError):
        code = None
    return f"{status} {code}" if code else status


async def sse_events(
    port: int, request: bytes, count: int | None = None
) -> tuple[list[tuple[str, bytes]], float | None]:
    """Read `count` events (None: to the end) of one SSE stream on a fresh connection, then close it.

    Returns the events as (`id`, `data`) and the seconds from connect to the first `data` event.
    The caller bounds it in time.
    """
    events: list[tuple[str, bytes]] = []
    first: float | None = None
    started = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            return events, first
        chunked = b"chunked" in head.lower()
        buffer = b""
        while count is None or len(events) < count:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            while b"\n\n" in buffer and (count is None or len(events) < count):
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
                if b"data" not in fields:
                    continue  # a keep-alive comment
                if first is None:
                    first = time.perf_counter() - started
                events.append((fields.get(b"id", b"").decode(), fields[b"data"]))
                if orjson.loads(fields[b"data"]).get("type") in ("done", "error"):
                    return events, first
    except (OSError, asyncio.IncompleteReadError, ValueError):
        return events, first
    finally:
        if writer is not None:
            writer.close()
    return events, first


async def ws_stream(url: str, frame: bytes | str, idle: asyncio.Event | None = None) -> StreamResult:
    """One WebSocket: send `frame`, read to `done`/`error`."""
    result = StreamResult()
    started = time.perf_counter()
    try:
        async with ws_connect(
            url, compression=None, ping_interval=None, open_timeout=60, max_size=None
        ) as sock:
            await sock.send(frame)
            async for message in sock:
                if _account(result, message, started):
                    break
    except (OSError, TimeoutError, ValueError, Exception):  # noqa: BLE001 - any failure is a failed stream
        return result
    return result


@dataclass
class StreamPhase:
    clients: int
    results: list[StreamResult]
    elapsed: float

    @property
    def completion(self) -> float:
        return 100.0 * sum(r.completed for r in self.results) / max(1, self.clients)

    def first_token_ms(self, q: float) -> float:
        return percentile([r.first_token for r in self.results if r.first_token is not None], q) * 1000

    @property
    def events_per_s(self) -> float:
        return sum(r.events for r in self.results) / self.elapsed if self.elapsed else 0.0

    @property
    def tokens_per_s(self) -> float:
        return sum(r.tokens for r in self.results) / self.elapsed if self.elapsed else 0.0


async def stream_phase(
    clients: int, start: Callable[[int], asyncio.Future[StreamResult] | object], limit: float
) -> StreamPhase:
    """`clients` streams at once; rates use the time until the last stream ended."""
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(start(i)) for i in range(clients)]  # type: ignore[arg-type]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    results = [t.result() if t in done and not t.exception() else StreamResult() for t in tasks]
    ends = [r.finished_at for r in results if r.finished_at]
    elapsed = (max(ends) if ends else time.perf_counter()) - started
    return StreamPhase(clients, results, elapsed)


async def saturation(start: Callable[[int], object], clients: int, duration: float) -> tuple[int, int, float]:
    """Closed loop: `clients` workers start a new stream as soon as theirs ends. (events, tokens, s)."""
    counter = itertools.count()
    deadline = time.perf_counter() + duration
    events = tokens = 0

    async def worker() -> None:
        nonlocal events, tokens
        while time.perf_counter() < deadline:
            result: StreamResult = await start(next(counter))  # type: ignore[misc]
            events += result.events
            tokens += result.tokens

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), duration + 60)
    return events, tokens, time.perf_counter() - started


async def open_idle_websockets(url: str, count: int, hold: asyncio.Event) -> tuple[int, list[object]]:
    """Open `count` WebSockets, prove each live with one round trip, keep them until `hold` is set."""
    opened = 0
    ready = asyncio.Event()
    tasks = []

    async def one(i: int) -> None:
        nonlocal opened
        try:
            async with ws_connect(url, compression=None, ping_interval=None, open_timeout=60) as sock:
                await sock.send('{"type": "ping"}')
                await sock.recv()
                opened += 1
                if opened == count:
                    ready.set()
                await hold.wait()
        except Exception:  # noqa: BLE001 - a socket that failed to open is counted as missing
            return

    for i in range(count):
        tasks.append(asyncio.ensure_future(one(i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # a burst the backlog absorbs, not a SYN flood
    try:
        await asyncio.wait_for(ready.wait(), 60)
    except TimeoutError:
        pass
    return opened, tasks


Starter = Callable[[int], Awaitable["StreamResult"]]  # stream i -> the coroutine that runs it


def service_chats(transport: str, port: int) -> Starter:
    """New chats on the service, each in a session of its own: SSE (`POST /api/v1/chat/stream` on a
    fresh connection each) or WebSocket (a socket each)."""
    tag = f"c{random.randrange(1 << 30)}"  # noqa: S311 - fresh session ids per phase
    message = "Tell me about shipping"
    if transport == "SSE":

        def sse(i: int) -> Awaitable[StreamResult]:
            body = orjson.dumps({"session_id": f"{tag}-{i}", "message": message})
            return sse_stream(port, http_request("POST", "/api/v1/chat/stream", port, body, True))

        return sse
    url = f"ws://127.0.0.1:{port}/api/v1/chat/ws"

    def ws(i: int) -> Awaitable[StreamResult]:
        frame = orjson.dumps({"type": "chat", "session_id": f"{tag}-{i}", "message": message})
        return ws_stream(url, frame.decode())

    return ws


def bare_streams(transport: str, port: int, tokens: int, ms: float) -> Starter:
    """The bare app's streams of `tokens` events `ms` apart: SSE (`/sse`) or WebSocket (`/ws`)."""
    if transport == "SSE":
        request = http_request("GET", f"/sse?n={tokens}&ms={ms:g}", port, close=True)
        return lambda i: sse_stream(port, request)
    frame = orjson.dumps({"type": "stream", "n": tokens, "ms": ms}).decode()
    return lambda i: ws_stream(f"ws://127.0.0.1:{port}/ws", frame)
