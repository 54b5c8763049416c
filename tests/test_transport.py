"""The lean model transport: against a raw asyncio HTTP server whose every byte the test controls,
and under the service's model client on a loopback network (TLS, a CONNECT proxy, a counting relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai
import pytest
import trustme

from msev15.agent.model import ModelUnavailable, TextDelta
from msev15.agent.openai_chat import OpenAIChatModel
from msev15.agent.providers import create_model
from msev15.agent.transport import LeanTransport, lean_http_client
from tests.conftest import make_settings
from tests.loopback_net import connect_proxy, relay
from tests.openai_server import Reply, ScriptedOpenAI

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


async def _stalls_mid_body(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    """A chunk, a pause shorter than the client's read timeout, a chunk, then nothing more."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"6\r\nsecond\r\n")
    await writer.drain()
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


_more: dict[str, asyncio.Event] = {}  # the test lets the server send the rest


async def _ten_chunks_at_once_then_one_more(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    pieces = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"event %d\n" % i for i in range(10)))
    writer.write(pieces + b"6\r\nev")  # ten whole chunks and the start of an eleventh, in one write
    await writer.drain()
    await _more["rest"].wait()
    writer.write(b"ent!\r\n0\r\n\r\n")
    await writer.drain()
    return True


async def _interim_answers_first(n: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    return await _keep_alive_json(n, head, writer)


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


@pytest.mark.parametrize("raw_server", [_ten_chunks_at_once_then_one_more], indirect=True)
async def test_chunks_that_arrived_together_are_handed_over_together(raw_server: RawServer) -> None:
    """One piece for what one read brought (a model that wrote many events at once costs one pass),
    and a chunk still on its way does not hold back those before it."""
    _more["rest"] = asyncio.Event()
    async with client() as http:
        async with http.stream("GET", f"http://127.0.0.1:{raw_server.port}/") as response:
            pieces = response.aiter_raw()
            first = await anext(pieces)
            assert first == b"".join(b"event %d\n" % i for i in range(10))
            _more["rest"].set()
            assert [piece async for piece in pieces] == [b"event!"]


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


@pytest.mark.parametrize("raw_server", [_stalls_mid_body], indirect=True)
async def test_the_read_timeout_counts_each_wait_for_the_server_not_the_readers_pauses(
    raw_server: RawServer,
) -> None:
    async with httpx2.AsyncClient(transport=LeanTransport(), timeout=httpx2.Timeout(0.25)) as http:
        async with http.stream("GET", f"http://127.0.0.1:{raw_server.port}/") as response:
            parts = response.aiter_raw()
            assert await anext(parts) == b"first"
            await asyncio.sleep(0.4)  # a slow reader: longer than the timeout, while "second" arrives
            assert await anext(parts) == b"second"
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx2.ReadTimeout):
                await anext(parts)  # the server stalls: this wait alone times out
            assert 0.25 <= loop.time() - started < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the timeout's cancel was taken back


@pytest.mark.parametrize("raw_server", [_interim_answers_first], indirect=True)
async def test_interim_1xx_answers_are_skipped(raw_server: RawServer) -> None:
    async with client() as http:
        for n in (1, 2):
            response = await http.post(f"http://127.0.0.1:{raw_server.port}/", json={})
            assert (response.status_code, response.json()) == (200, {"n": n})
    assert raw_server.connections == 1  # the final answer's body ended where it should


@pytest.mark.parametrize("raw_server", [_long_chunked], indirect=True)
async def test_connection_cap_makes_requests_wait_for_a_slot(raw_server: RawServer) -> None:
    limits = httpx2.Limits(max_connections=1)
    timeout = httpx2.Timeout(1.0, pool=0.2)
    async with httpx2.AsyncClient(transport=LeanTransport(limits=limits), timeout=timeout) as http:
        url = f"http://127.0.0.1:{raw_server.port}/"
        async with http.stream("GET", url):
            with pytest.raises(httpx2.PoolTimeout):  # the one connection is busy with that body
                await http.get(url)
        assert (await http.get(url)).status_code == 200  # free again once that body was closed


@pytest.mark.parametrize("raw_server", [_never_answers], indirect=True)
async def test_cancelled_request_gives_its_slot_back(raw_server: RawServer) -> None:
    limits = httpx2.Limits(max_connections=1)
    timeout = httpx2.Timeout(0.3, pool=0.2)
    async with httpx2.AsyncClient(transport=LeanTransport(limits=limits), timeout=timeout) as http:
        url = f"http://127.0.0.1:{raw_server.port}/"
        waiting = asyncio.create_task(http.get(url))
        await asyncio.sleep(0.1)
        waiting.cancel()  # a turn stopped while the model had not answered yet
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        with pytest.raises(httpx2.ReadTimeout):  # not PoolTimeout: the one slot was free again
            await http.get(url)


# The service's model client on a loopback network -------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
_ENVIRONMENT = (
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def model_at(tmp_path: Path, base_url: str) -> OpenAIChatModel:
    """The service's own model client (create_model), without retries: every failure shows."""
    settings = make_settings(tmp_path, llm_provider="openai", openai_base_url=base_url, model_max_retries=0)
    model = create_model(settings)
    assert isinstance(model, OpenAIChatModel)
    return model


async def text_of(model: OpenAIChatModel) -> str:
    return "".join([e.text async for e in model.stream(MESSAGES, []) if isinstance(e, TextDelta)])


def origin(server: ScriptedOpenAI) -> int:
    return int(server.base_url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA) -> ssl.SSLContext:
    """The server side of TLS for 127.0.0.1, with a certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test CA as the operator's CA bundle (SSL_CERT_FILE); no proxy unless a test sets one."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return path


async def test_model_calls_reuse_one_connection(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    async with relay(origin(openai_server)) as (port, tally):
        model = model_at(tmp_path, f"http://127.0.0.1:{port}/v1")
        for n in range(5):
            openai_server.push(Reply.say(f"answer {n}"))
            assert await text_of(model) == f"answer {n}"
        await model.close()
    assert tally.connections == 1


async def test_stopped_model_stream_is_not_pooled(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    openai_server.push(Reply.say("one two three four five", delay=0.05), Reply.say("next"))
    async with relay(origin(openai_server)) as (port, tally):
        model = model_at(tmp_path, f"http://127.0.0.1:{port}/v1")
        async with contextlib.aclosing(model.stream(MESSAGES, [])) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break  # the turn was stopped: the rest of that body is still on its connection
        assert await text_of(model) == "next"
        await model.close()
    assert tally.connections == 2


async def test_ca_bundle_from_ssl_cert_file(
    tmp_path: Path,
    openai_server: ScriptedOpenAI,
    tls: ssl.SSLContext,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    openai_server.push(Reply.say("over tls"))
    async with relay(origin(openai_server), tls=tls) as (port, _):
        model = model_at(tmp_path, f"https://127.0.0.1:{port}/v1")
        assert await text_of(model) == "over tls"
        await model.close()
        monkeypatch.delenv("SSL_CERT_FILE")  # the system bundle does not know the test CA
        model = model_at(tmp_path, f"https://127.0.0.1:{port}/v1")
        with pytest.raises(ModelUnavailable, match="certificate is not trusted"):
            await text_of(model)
        await model.close()


async def test_verify_context_is_used(
    openai_server: ScriptedOpenAI,
    ca: trustme.CA,
    tls: ssl.SSLContext,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts another CA only
    trustme.CA().configure_trust(stranger)
    async with relay(origin(openai_server), tls=tls) as (port, _):
        url = f"https://127.0.0.1:{port}/v1/models"
        async with lean_http_client(verify=stranger) as http:  # it wins over SSL_CERT_FILE
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(url)
        monkeypatch.delenv("SSL_CERT_FILE")
        async with lean_http_client(verify=trusting) as http:
            assert (await http.get(url)).status_code == 200


async def test_https_proxy_and_no_proxy_from_environment(
    tmp_path: Path,
    openai_server: ScriptedOpenAI,
    tls: ssl.SSLContext,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with relay(origin(openai_server), tls=tls) as (port, _), connect_proxy() as (proxy_port, proxy):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy_port}")
        openai_server.push(Reply.say("via proxy"), Reply.say("direct"))
        model = model_at(tmp_path, f"https://127.0.0.1:{port}/v1")
        assert await text_of(model) == "via proxy"
        await model.close()
        assert proxy.targets == [f"127.0.0.1:{port}"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        model = model_at(tmp_path, f"https://127.0.0.1:{port}/v1")
        assert await text_of(model) == "direct"
        await model.close()
        assert proxy.targets == [f"127.0.0.1:{port}"]  # not through the proxy again


async def test_connection_cap_and_idle_expiry(openai_server: ScriptedOpenAI) -> None:
    openai_server.push(Reply.say("a b c d", delay=0.05, times=4))
    async with relay(origin(openai_server)) as (port, tally):
        limits = httpx2.Limits(max_connections=2, keepalive_expiry=0.3)
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="k",
            max_retries=0,
            http_client=lean_http_client(limits=limits),
        )
        model = OpenAIChatModel(client, "gpt-4o", "openai", max_retries=0)
        assert await asyncio.gather(*(text_of(model) for _ in range(4))) == ["a b c d"] * 4
        assert tally.peak == 2  # four calls at once on two connections: two waited for a slot
        for _ in range(40):
            if tally.open == 0:
                break
            await asyncio.sleep(0.05)
        assert tally.open == 0  # idle past keepalive_expiry: closed by the client, not left open
        await model.close()
