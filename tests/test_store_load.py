"""Shared session stores under load, against a real redis-server.

A burst waits for a pooled connection instead of being refused; a Redis restart during a burst
fails requests before their streams start (503 + Retry-After) or lets them complete; a lock
whose holder vanished frees itself within its lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from msev15 import create_app
from msev15.settings import Settings
from msev15.stores.sessions.redis import RedisSessionStore, _enc
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI
from tests.redis_server import RedisServer
from tests.servers import serve_on_loopback

BURST = 300  # the benchmark runs 1,000; CI affords this many on two cores


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def service(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
) -> AsyncIterator[httpx.AsyncClient]:
    """The service on loopback with Redis sessions and a pool far smaller than the burst."""
    extra: dict[str, Any] = getattr(request, "param", {})
    settings: Settings = make_settings(
        tmp_path, session_store="redis", redis_url=redis_server.url, redis_max_connections=32, **extra
    )
    async with serve_on_loopback(create_app(settings), graceful_timeout=5) as port:
        limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
        ) as client:
            yield client


async def sse_chat(
    client: httpx.AsyncClient, session: str, message: str
) -> tuple[int, dict[str, str], list[Any]]:
    """One streamed chat: its status, headers, and every event (or the error body when refused)."""
    body = {"session_id": session, "message": message}
    async with client.stream("POST", "/api/v1/chat/stream", json=body) as response:
        if response.status_code != 200:
            return response.status_code, dict(response.headers), [orjson.loads(await response.aread())]
        events = [
            orjson.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")
        ]
        return 200, dict(response.headers), events


async def test_a_burst_of_new_chats_waits_for_connections_and_completes(service: httpx.AsyncClient) -> None:
    started = time.monotonic()
    results = await asyncio.gather(
        *(sse_chat(service, f"burst-{i}", "What is your return policy?") for i in range(BURST))
    )
    statuses = [status for status, _, _ in results]
    assert statuses == [200] * BURST
    ends = [events[-1]["type"] for _, _, events in results]
    assert ends == ["done"] * BURST, [e for _, _, e in results if e[-1]["type"] != "done"][:3]
    assert time.monotonic() - started < 60


@pytest.fixture
async def slow_model_service(
    tmp_path: Path, redis_server: RedisServer, openai_server: ScriptedOpenAI
) -> AsyncIterator[httpx.AsyncClient]:
    openai_server.push(Reply.say(" ".join(f"w{i}" for i in range(10)), delay=0.05, times=-1))
    settings = make_settings(
        tmp_path,
        session_store="redis",
        redis_url=redis_server.url,
        redis_max_connections=8,
        session_store_wait_seconds=3,
        llm_provider="openai",
        openai_base_url=openai_server.base_url,
        openai_api_key="k",
    )
    async with serve_on_loopback(create_app(settings), graceful_timeout=5) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client


async def test_a_redis_restart_during_a_burst_fails_cleanly_or_completes(
    slow_model_service: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    client = slow_model_service
    chats = [asyncio.create_task(sse_chat(client, f"r-{i}", "hello")) for i in range(60)]

    async def restart() -> None:
        await asyncio.sleep(0.2)  # let the burst get under way: turns stream while Redis goes
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)

    await restart()
    results = await asyncio.wait_for(asyncio.gather(*chats), timeout=60)  # none hangs
    for status, headers, events in results:
        if status == 200:  # a stream that began always completes
            assert events[-1]["type"] == "done", events[-3:]
        else:  # a refusal comes before the stream: a 503 with a time to retry
            assert status == 503 and headers["retry-after"].isdigit()
            assert events[0]["error"]["type"] == "unavailable"
    assert any(status == 200 for status, _, _ in results)
    status, _, events = await sse_chat(client, "after", "hello")  # recovered by itself
    assert status == 200 and events[-1]["type"] == "done"


async def test_a_lock_whose_holder_vanished_frees_itself_within_its_lease(redis_server: RedisServer) -> None:
    """An instance that died holding a turn lock never released it; the lease frees the session."""
    prefix = f"t-{uuid.uuid4().hex[:6]}"
    store = await RedisSessionStore.open(redis_server.url, lock_timeout=1.0, lock_wait=10, prefix=prefix)
    raw = Redis.from_url(redis_server.url)
    try:
        key = f"{prefix}:{{t={_enc('t')}}}:lock:{_enc('s')}"
        await raw.set(key, "token-of-a-dead-instance", px=1000)  # what a crashed holder leaves
        started = time.monotonic()
        async with store.lock("t", "s"):
            waited = time.monotonic() - started
        assert 0.5 < waited < 1.5
        assert await raw.exists(key) == 0  # released at once after the turn
    finally:
        await raw.aclose()
        await store.close()


async def test_the_redis_turn_buffer_stores_a_batch_in_one_trip_and_a_repeated_batch_once(
    redis_server: RedisServer,
) -> None:
    """Events added together go in one pipeline; a batch repeated after a lost reply (the retry
    through a Redis blip) adds only what had not landed; finish stores what was added first."""
    from msev15.stores.turns import TurnInfo
    from msev15.stores.turns_redis import RedisTurnBuffer, reader_client

    writer = Redis.from_url(redis_server.url)
    buffer = RedisTurnBuffer(writer, reader_client(redis_server.url), prefix=f"t-{uuid.uuid4().hex[:6]}")
    try:
        await buffer.open(TurnInfo("turn-b", "t", "s", None, time.time()))
        events = [(seq, b'{"seq": %d}' % seq) for seq in range(1, 4)]
        await buffer.extend("turn-b", events[:2])
        await buffer.extend("turn-b", events)  # 1 and 2 landed before: only 3 is new
        for seq, data in ((4, b"4"), (5, b"5")):
            buffer.add("turn-b", seq, data)  # never waits: sent in the background, together
        await buffer.finish("turn-b")
        assert [item async for item in await buffer.read("turn-b")] == [*events, (4, b"4"), (5, b"5")]
    finally:
        await buffer.close()
        await writer.aclose()
