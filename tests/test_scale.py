"""Several instances: two real Hypercorn servers sharing one real redis-server, and SQLite restarts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from msev15 import create_app
from tests.conftest import MakeModelSettings, make_settings
from tests.helpers import eventually
from tests.openai_server import Reply, ScriptedOpenAI
from tests.redis_server import RedisServer
from tests.servers import serve_on_loopback

TENANT = "acme"
SESSION = "web:visitor-1"  # a ':' in the id, as API.md allows


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")  # skips (fails in CI) without redis-server
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def instances(
    tmp_path: Path, count: int, *, make: MakeModelSettings | None = None, **overrides: Any
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`count` service instances on their own ports (same settings), each with an HTTP client.

    Offline-model settings in tmp_path, or `make`'s (e.g. `make_model_settings`), with `overrides`.
    """
    build = make or functools.partial(make_settings, tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            app = create_app(build(**overrides))
            port = await stack.enter_async_context(serve_on_loopback(app))
            client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15)
            clients.append(await stack.enter_async_context(client))
        yield clients


async def chat(client: httpx.AsyncClient, message: str, session: str = SESSION) -> httpx.Response:
    body = {"session_id": session, "tenant_id": TENANT, "message": message}
    return await client.post("/api/v1/chat", json=body)


async def history(client: httpx.AsyncClient, session: str = SESSION) -> httpx.Response:
    return await client.get(f"/api/v1/sessions/{session}/history", params={"tenant_id": TENANT})


def contents(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()["messages"]]


async def test_conversation_moves_between_instances(tmp_path: Path, redis_server: RedisServer) -> None:
    async with instances(tmp_path, 2, session_store="redis", redis_url=redis_server.url) as (a, b):
        first = await chat(a, "Hello, where is my order ORD-1002? I am alice@example.com")
        assert first.status_code == 200, first.text
        async with Redis.from_url(redis_server.url) as direct:  # the turn let go of its lock before answering
            assert await direct.keys("*:lock:*") == []
        second = await chat(b, "Thanks. What is your returns policy?")
        assert second.status_code == 200, second.text
        assert second.json()["message_count"] == 4
        expected = [
            ("user", "Hello, where is my order ORD-1002? I am alice@example.com"),
            ("assistant", first.json()["message"]),
            ("user", "Thanks. What is your returns policy?"),
            ("assistant", second.json()["message"]),
        ]
        assert contents(await history(a)) == expected
        assert contents(await history(b)) == expected
        listed = (await b.get("/api/v1/sessions", params={"tenant_id": TENANT})).json()
        assert [(s["session_id"], s["message_count"]) for s in listed["sessions"]] == [(SESSION, 4)]
        other_tenant = await b.get(f"/api/v1/sessions/{SESSION}/history", params={"tenant_id": "other"})
        assert other_tenant.status_code == 404
        ready = await a.get("/health/readiness")
        assert ready.json()["checks"]["sessions"] == "ok"
        deleted = await a.delete(f"/api/v1/sessions/{SESSION}", params={"tenant_id": TENANT})
        assert deleted.status_code == 200
        assert (await history(b)).status_code == 404


async def test_concurrent_turns_across_instances_stay_ordered(
    tmp_path: Path,
    redis_server: RedisServer,
    openai_server: ScriptedOpenAI,
    make_model_settings: MakeModelSettings,
) -> None:
    """Each turn must see every earlier turn: the model is asked with 0, 1, 2, ... earlier turns."""
    openai_server.push(Reply.say("one two three four five", delay=0.02, times=-1))
    redis = {"session_store": "redis", "redis_url": redis_server.url}
    async with instances(tmp_path, 2, make=make_model_settings, **redis) as (a, b):
        turns = 6
        replies = await asyncio.gather(*(chat((a, b)[i % 2], f"question {i}") for i in range(turns)))
        assert [r.status_code for r in replies] == [200] * turns, [r.text for r in replies]
        assert sorted(r.json()["message_count"] for r in replies) == [2 * (i + 1) for i in range(turns)]
        seen = sorted(len(body["messages"]) for body in openai_server.requests)  # system + history + new
        assert seen == [2 + 2 * i for i in range(turns)]
        stored = contents(await history(b))
        assert [role for role, _ in stored] == ["user", "assistant"] * turns
        asked = sorted(text for role, text in stored if role == "user")
        assert asked == [f"question {i}" for i in range(turns)]
        assert {text for role, text in stored if role == "assistant"} == {"one two three four five"}


async def test_redis_restart_is_a_clear_error_then_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with instances(tmp_path, 2, session_store="redis", redis_url=redis_server.url) as (a, b):
        first = await chat(a, "Hello, I am alice@example.com")
        assert first.status_code == 200, first.text

        await asyncio.to_thread(redis_server.stop)
        down = await chat(b, "Are you there?")
        assert down.status_code == 503, down.text
        assert down.json()["error"]["type"] == "unavailable"
        assert "Redis is unavailable" in down.json()["error"]["message"]
        # A stream that cannot take its session fails before it starts: a 503 to retry, never a 200.
        refused = await a.post(
            "/api/v1/chat/stream",
            json={"session_id": SESSION, "tenant_id": TENANT, "message": "Still there?"},
        )
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "unavailable"
        assert refused.headers["Retry-After"] == "1"
        gone = await history(a)
        assert gone.status_code == 503 and gone.json()["error"]["type"] == "unavailable"
        ready = await b.get("/health/readiness")
        assert ready.status_code == 503 and ready.json()["checks"]["sessions"].startswith("unavailable")

        await asyncio.to_thread(redis_server.start)

        async def recovered() -> bool:
            return (await b.get("/health/readiness")).status_code == 200

        # Pooled connections to the old process fail once, then reconnect.
        await eventually(recovered, within=5, interval=0.1, what="readiness recovering after Redis came back")
        again = await chat(b, "Back again")
        assert again.status_code == 200, again.text
        assert again.json()["message_count"] == 4
        stored = contents(await history(a))
        assert stored == [
            ("user", "Hello, I am alice@example.com"),
            ("assistant", first.json()["message"]),
            ("user", "Back again"),
            ("assistant", again.json()["message"]),
        ]


async def test_sqlite_sessions_survive_a_service_restart(tmp_path: Path) -> None:
    async with instances(tmp_path, 1, session_store="sqlite") as (before,):
        first = await chat(before, "Hello, I am alice@example.com")
        assert first.status_code == 200, first.text
    assert (tmp_path / "sessions.db").exists()
    async with instances(tmp_path, 1, session_store="sqlite") as (after,):
        stored = contents(await history(after))
        assert stored == [("user", "Hello, I am alice@example.com"), ("assistant", first.json()["message"])]
        second = await chat(after, "And my order ORD-1001?")
        assert second.status_code == 200 and second.json()["message_count"] == 4
        listed = (await after.get("/api/v1/sessions", params={"tenant_id": TENANT})).json()
        assert listed["count"] == 1 and listed["sessions"][0]["session_id"] == SESSION


async def test_rate_limits_are_shared_by_instances_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with instances(
        tmp_path,
        2,
        session_store="redis",
        redis_url=redis_server.url,
        enable_rate_limiting=True,
        rate_limit_per_minute=3,
    ) as (a, b):
        codes = [
            (await client.get("/api/v1/sessions", params={"tenant_id": TENANT})).status_code
            for client in (a, b, a)
        ]
        assert codes == [200, 200, 200]
        refused = await b.get("/api/v1/sessions", params={"tenant_id": TENANT})
        assert refused.status_code == 429  # the fourth request of this client, counted across both instances
        assert refused.json()["error"]["type"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
        assert (await a.get("/health")).status_code == 200
