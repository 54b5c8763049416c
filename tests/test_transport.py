"""The lean model transport against a raw asyncio HTTP server whose every byte the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx2
import pytest

from msev15.agent.transport import LeanTransport

Handler = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]  # -> keep the connection open?


@dataclass
class RawServer:
    port: int = 0
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection number, request head)


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def raw_server(request: pytest.FixtureRequest) -> AsyncIterator[RawServer]:
    handler: Handler = request.param
    state = RawServer()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        number = state.connections
        try:
            while (head := await _read_request(reader)) is not None:
                state.requests.append((number, head))
                if not await handler(len(state.requests), head, writer):
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def _keep_alive_json(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    body = b'{"n": %d}' % n
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    return True


async def _chunked_with_trailer(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"data: one\n\n", b"data: two\n\n"):
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
    await writer.drain()
    return True


async def _close_delimited(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    await writer.drain()
    return False


async def _drop_second_request(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    if n == 2:
        return False  # a keep-alive connection the server gave up on: closed, no answer
    return await _keep_alive_json(n, head, writer)


async def _never_answers(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(5)
    return False


async def _long_chunked(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(50):
        piece = b"piece %d\n" % i
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


def client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=LeanTransport(), timeout=httpx2.Timeout(1.0))


@pytest.mark.parametrize("raw_server", [_keep_alive_json], indirect=True)
async def test_keep_alive_reuses_one_connection(raw_server: RawServer) -> None:
    async with client() as http:
        for n in range(1, 6):
            response = await http.post(f"http://127.0.0.1:{raw_server.port}/v1/x?q=1", json={"a": n})
            assert response.json() == {"n": n}
    assert raw_server.connections == 1
    first = raw_server.requests[0][1]
    assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n") and b"host: 127.0.0.1" in first.lower()


@pytest.mark.parametrize("raw_server", [_chunked_with_trailer], indirect=True)
async def test_chunked_body_with_trailers_then_reuse(raw_server: RawServer) -> None:
    async with client() as http:
        for _ in range(2):
            async with http.stream("GET", f"http://127.0.0.1:{raw_server.port}/") as response:
                assert [line async for line in response.aiter_lines()] == ["data: one", "", "data: two", ""]
    assert raw_server.connections == 1


@pytest.mark.parametrize("raw_server", [_close_delimited], indirect=True)
async def test_body_until_close_is_not_reused(raw_server: RawServer) -> None:
    async with client() as http:
        for _ in range(2):
            assert (await http.get(f"http://127.0.0.1:{raw_server.port}/")).text == "until the end"
    assert raw_server.connections == 2


@pytest.mark.parametrize("raw_server", [_drop_second_request], indirect=True)
async def test_stale_pooled_connection_is_retried_on_a_fresh_one(raw_server: RawServer) -> None:
    async with client() as http:
        url = f"http://127.0.0.1:{raw_server.port}/"
        assert (await http.get(url)).json() == {"n": 1}
        assert (await http.get(url)).json() == {"n": 3}  # request 2 died with its connection, unanswered
    assert raw_server.connections == 2


@pytest.mark.parametrize("raw_server", [_long_chunked], indirect=True)
async def test_abandoned_body_closes_its_connection(raw_server: RawServer) -> None:
    async with client() as http:
        url = f"http://127.0.0.1:{raw_server.port}/"
        async with http.stream("GET", url) as response:
            async for _ in response.aiter_bytes():
                break  # unread bytes stay on that connection: it must not be pooled
        async with http.stream("GET", url) as response:
            body = b"".join([part async for part in response.aiter_bytes()])
        assert body.count(b"piece") == 50
    assert raw_server.connections == 2


@pytest.mark.parametrize("raw_server", [_never_answers], indirect=True)
async def test_read_timeout_and_connect_error_map_to_httpx_errors(raw_server: RawServer) -> None:
    async with httpx2.AsyncClient(transport=LeanTransport(), timeout=httpx2.Timeout(0.2)) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.get(f"http://127.0.0.1:{raw_server.port}/")
        with pytest.raises(httpx2.ConnectError):
            await http.get("http://127.0.0.1:9/")
        with pytest.raises(httpx2.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")
