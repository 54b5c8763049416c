"""SessionStore contract: one suite, run against the memory, SQLite and Redis stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from msev15.stores.sessions import (
    MemorySessionStore,
    Message,
    SessionLimitError,
    SessionStore,
    SessionStoreUnavailable,
    hypercorn_workers,
)
from msev15.stores.sessions.redis import RedisSessionStore
from msev15.stores.sessions.sqlite import SqliteSessionStore
from tests.helpers import eventually, free_port
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


MakeStore = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))  # skips (fails in CI) without redis-server
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[MakeStore]:
    """Opens stores of this run's kind; stores opened twice share the same file / Redis namespace."""
    server: RedisServer | None = request.getfixturevalue("redis_server") if kind == "redis" else None
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    opened: list[Any] = []

    async def make(**options: Any) -> Any:
        opts: dict[str, Any] = {
            "ttl_seconds": 60,
            "max_per_tenant": 100,
            "max_messages": 50,
            "clock": clock,
        }
        opts.update(options)
        store: Any
        if kind == "memory":
            store = MemorySessionStore(max_sessions=opts.pop("max_sessions", 1000), **opts)
        elif kind == "sqlite":
            path = opts.pop("path", tmp_path / "sessions.db")
            store = await SqliteSessionStore.open(path, max_sessions=opts.pop("max_sessions", 1000), **opts)
        else:
            assert server is not None
            if "max_sessions" in opts:
                pytest.skip("Redis bounds its memory with maxmemory and TTLs, not MAX_SESSIONS")
            opts.pop("path", None)
            store = await RedisSessionStore.open(server.url, prefix=opts.pop("prefix", prefix), **opts)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: MakeStore) -> SessionStore:
    made: SessionStore = await make_store()
    return made


def turn(text: str) -> list[Message]:
    return [Message("user", text, 1.0), Message("assistant", f"re: {text}", 2.0)]


async def test_save_get_history(store: SessionStore) -> None:
    assert await store.get("t", "s") is None
    saved = await store.save_turn("t", "s", turn("a"))
    assert [m.content for m in saved.messages] == ["a", "re: a"]
    await store.save_turn("t", "s", turn("b"), metadata={"k": 1, "nested": {"list": [1, "x"]}})
    await store.save_turn("t", "s", [Message("assistant", "c", 3.0, [{"id": "1", "name": "x"}], True)])
    found = await store.get("t", "s")
    assert found is not None
    assert [m.content for m in found.messages] == ["a", "re: a", "b", "re: b", "c"]
    assert found.messages[-1].tool_calls == [{"id": "1", "name": "x"}] and found.messages[-1].interrupted
    assert found.metadata == {"k": 1, "nested": {"list": [1, "x"]}}  # kept when a turn passes none
    assert found.created_at <= found.last_activity


async def test_empty_turn_replaces_metadata_only(store: SessionStore) -> None:
    await store.save_turn("t", "s", turn("a"), metadata={"pending": [1]})
    saved = await store.save_turn("t", "s", [], metadata={})
    assert saved.metadata == {} and len(saved.messages) == 2
    found = await store.get("t", "s")
    assert found is not None and found.metadata == {} and len(found.messages) == 2


async def test_tenant_isolation(store: SessionStore) -> None:
    await store.save_turn("A", "s", turn("for A"))
    await store.save_turn("B", "s", turn("for B"))
    a, b = await store.get("A", "s"), await store.get("B", "s")
    assert a is not None and b is not None
    assert a.messages[0].content == "for A" and b.messages[0].content == "for B"
    assert [s.session_id for s in await store.list("A")] == ["s"]
    assert await store.delete("A", "s") is True
    assert await store.get("B", "s") is not None
    assert await store.delete("A", "s") is False
    # "a:b" + "c" and "a" + "b:c" are different sessions, whatever the key scheme.
    await store.save_turn("a:b", "c", turn("x"))
    assert await store.get("a", "b:c") is None
    for tenant, sid in (("a}", "{b"), ("a%3A", "b"), ("a", "%3Ab")):
        await store.save_turn(tenant, sid, turn(f"{tenant}|{sid}"))
    assert [s.session_id for s in await store.list("a")] == ["%3Ab"]
    found = await store.get("a%3A", "b")
    assert found is not None and found.messages[0].content == "a%3A|b"


async def test_lock_orders_concurrent_turns(store: SessionStore) -> None:
    order: list[str] = []

    async def run(name: str, work: int) -> None:
        async with store.lock("t", "s"):
            order.append(f"{name}-start")
            for _ in range(work):  # real store round trips while holding the lock
                await store.get("t", "s")
            await store.save_turn("t", "s", turn(name))
            order.append(f"{name}-end")

    await asyncio.gather(run("first", 5), run("second", 0))
    assert order == ["first-start", "first-end", "second-start", "second-end"]
    found = await store.get("t", "s")
    assert found is not None and [m.content for m in found.messages][::2] == ["first", "second"]


async def test_other_sessions_not_blocked_by_a_lock(store: SessionStore) -> None:
    async with store.lock("t", "busy"):
        async with asyncio.timeout(2):
            async with store.lock("t", "free"):
                await store.save_turn("t", "free", turn("x"))


async def test_ttl_expiry(store: SessionStore, clock: Clock) -> None:
    await store.save_turn("t", "old", turn("x"))
    clock.now += 30
    await store.save_turn("t", "new", turn("y"))
    clock.now += 31  # "old" idle for 61 s, "new" for 31 s
    assert await store.get("t", "old") is None
    assert await store.get("t", "new") is not None
    assert [s.session_id for s in await store.list("t")] == ["new"]
    assert await store.delete("t", "old") is False
    clock.now += 61
    assert await store.purge_expired() == 1
    assert await store.list("t") == []
    saved = await store.save_turn("t", "new", turn("z"))  # an expired id starts afresh
    assert [m.content for m in saved.messages] == ["z", "re: z"] and saved.created_at == clock.now


async def test_activity_extends_life(store: SessionStore, clock: Clock) -> None:
    await store.save_turn("t", "s", turn("x"))
    for _ in range(3):
        clock.now += 40
        await store.save_turn("t", "s", turn("again"))
    assert await store.get("t", "s") is not None


async def test_list_most_recent_first(store: SessionStore, clock: Clock) -> None:
    for sid in ("a", "b", "c"):
        clock.now += 1
        await store.save_turn("t", sid, turn(sid))
    clock.now += 1
    await store.save_turn("t", "a", turn("again"))
    listed = await store.list("t")
    assert [s.session_id for s in listed] == ["a", "c", "b"]
    assert [len(s.messages) for s in listed] == [4, 2, 2]
    assert await store.list("other") == []


async def test_max_messages_keeps_newest(store: SessionStore) -> None:
    for i in range(30):
        await store.save_turn("t", "s", turn(str(i)))
    found = await store.get("t", "s")
    assert found is not None and len(found.messages) == 50
    assert found.messages[-2].content == "29" and found.messages[0].content == "5"


async def test_tenant_limit(make_store: MakeStore, clock: Clock) -> None:
    limited = await make_store(max_per_tenant=2)
    await limited.save_turn("A", "1", turn("x"))
    await limited.save_turn("A", "2", turn("x"))
    with pytest.raises(SessionLimitError):
        await limited.save_turn("A", "3", turn("x"))
    assert await limited.get("A", "3") is None
    await limited.save_turn("A", "2", turn("existing sessions still take turns"))
    await limited.save_turn("B", "1", turn("other tenants are not affected"))
    assert await limited.delete("A", "1") is True  # deleting makes room
    await limited.save_turn("A", "3", turn("x"))
    clock.now += 61  # expired sessions make room again
    await limited.save_turn("A", "4", turn("x"))
    await limited.save_turn("A", "5", turn("x"))


async def test_lru_eviction(make_store: MakeStore) -> None:
    store = await make_store(max_sessions=3, max_per_tenant=2)
    await store.save_turn("A", "1", turn("x"))
    await store.save_turn("B", "1", turn("x"))
    await store.save_turn("A", "1", turn("touch"))  # A:1 is now the most recent
    await store.save_turn("C", "1", turn("x"))
    await store.save_turn("D", "1", turn("x"))  # over 3: the least recently used (B:1) goes
    assert await store.get("B", "1") is None
    assert await store.get("A", "1") is not None


async def test_locks_are_dropped_when_idle(store: Any) -> None:
    async with store.lock("t", "s"):
        pass
    assert len(store._locks) == 0
    if isinstance(store, RedisSessionStore):
        assert await store.client.keys(f"{store.prefix}:*lock*") == []


async def test_durable_stores_share_and_keep_sessions(make_store: MakeStore, kind: str) -> None:
    if kind == "memory":
        pytest.skip("the memory store is per process by design")
    first = await make_store()
    await first.save_turn("t", "s", turn("before restart"), metadata={"pending": {"id": "x"}})
    await first.close()
    second = await make_store()  # a restart, or another instance
    found = await second.get("t", "s")
    assert found is not None and found.messages[0].content == "before restart"
    assert found.metadata == {"pending": {"id": "x"}}
    await second.save_turn("t", "s", turn("after"))
    assert [s.session_id for s in await second.list("t")] == ["s"]


async def test_lock_excludes_other_instances(make_store: MakeStore, kind: str) -> None:
    """Two stores on one file / one Redis are two workers or instances: one turn at a time."""
    if kind == "memory":
        pytest.skip("the memory store is per process by design")
    a, b = await make_store(), await make_store()
    entered = asyncio.Event()

    async def second_turn() -> None:
        async with b.lock("t", "s"):
            entered.set()
            await b.save_turn("t", "s", turn("second"))

    async with a.lock("t", "s"):
        waiter = asyncio.create_task(second_turn())
        done, _ = await asyncio.wait({waiter}, timeout=0.3)
        assert not done and not entered.is_set()
        await a.save_turn("t", "s", turn("first"))
    await asyncio.wait_for(waiter, timeout=5)
    found = await a.get("t", "s")
    assert found is not None and [m.content for m in found.messages][::2] == ["first", "second"]


async def test_reads_under_the_lock_see_the_last_write_of_any_instance_and_their_own(
    make_store: MakeStore, kind: str, clock: Clock
) -> None:
    """The SQLite store reads the session with the lease it takes; what its holder gets must still be
    what a plain read would give: another instance's write before the lock, the holder's own writes,
    the owner rule and the expiry."""
    a = await make_store()
    b = await make_store() if kind != "memory" else a
    await b.save_turn("t", "s", turn("elsewhere"), user="ann")
    async with a.lock("t", "s"):
        found = await a.get("t", "s", "ann")
        assert found is not None and found.messages[0].content == "elsewhere"
        assert await a.get("t", "s", "bob") is None  # another customer's session reads as absent
        await a.save_turn("t", "s", turn("mine"), user="ann")
        found = await a.get("t", "s", "ann")
        assert found is not None and [m.content for m in found.messages][::2] == ["elsewhere", "mine"]
    async with a.lock("t", "s"):
        clock.now += 61  # past the 60 s TTL while the lock is held
        assert await a.get("t", "s") is None
    assert await a.get("t", "s") is None


async def test_a_sqlite_turn_costs_two_database_calls(make_store: MakeStore, kind: str) -> None:
    """The lease comes with the session's row, and goes with the turn's last save: a turn that
    reads and saves its session costs two calls, and another worker may take the session as soon
    as that save is committed."""
    if kind != "sqlite":
        pytest.skip("the SQLite store's calls to its connection thread")
    store, other = await make_store(), await make_store(lock_wait=0.2)
    await store.save_turn("t", "s", turn("before"))
    calls: list[str] = []
    run = store._db.together

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        calls.append(fn.__name__)
        return await run(fn, *args)

    store._db.together = counted
    async with store.lock("t", "s"):
        found = await store.get("t", "s")
        assert found is not None
        await store.save_turn("t", "s", turn("approval taken"))  # not the last: the lease stays
        await store.save_turn("t", "s", turn("after"), last=True)
        async with other.lock("t", "s"):  # another worker's next turn needs no wait
            found = await other.get("t", "s")
            assert found is not None and [m.content for m in found.messages][::2][-1] == "after"
    assert calls == ["take_lease", "save", "save"]


async def test_busy_lock_waits_a_bounded_time(make_store: MakeStore, kind: str) -> None:
    if kind == "memory":
        pytest.skip("the memory store waits as long as the turn it waits for")
    a, b = await make_store(), await make_store(lock_wait=0.2)
    async with a.lock("t", "s"):
        with pytest.raises(SessionStoreUnavailable, match="still running"):
            async with asyncio.timeout(5):
                async with b.lock("t", "s"):
                    pass


# Redis only -----------------------------------------------------------------------------


async def test_redis_ttl_is_real(redis_server: RedisServer) -> None:
    """Redis itself forgets an idle session (PEXPIRE on every write), without a purge."""
    store = await RedisSessionStore.open(redis_server.url, ttl_seconds=0.3, prefix=f"ttl-{uuid.uuid4().hex}")
    try:
        await store.save_turn("t", "s", turn("x"))
        keys = store._keys("t", "s")
        assert 0 < await store.client.pttl(keys[0]) <= 300
        assert 0 < await store.client.pttl(keys[1]) <= 300

        async def expired() -> bool:
            return not await store.client.exists(*keys)

        # A bounded poll: Redis expires keys on its own schedule.
        await eventually(expired, within=5, interval=0.05, what="Redis expiring the session")
        assert await store.get("t", "s") is None
    finally:
        await store.close()


async def test_redis_down_is_a_clear_error() -> None:
    store = await RedisSessionStore.open(f"redis://127.0.0.1:{free_port()}/0", pool_wait=0.5)
    try:
        async with asyncio.timeout(5):  # a write retries for pool_wait, then gives up
            with pytest.raises(SessionStoreUnavailable, match="Redis is unavailable"):
                await store.get("t", "s")
            with pytest.raises(SessionStoreUnavailable):
                await store.save_turn("t", "s", turn("x"))
            with pytest.raises(SessionStoreUnavailable):
                async with store.lock("t", "s"):
                    pass
            with pytest.raises(SessionStoreUnavailable):
                await store.check()
    finally:
        await store.close()


# Workers warning -------------------------------------------------------------------------


def test_hypercorn_workers(tmp_path: Path) -> None:
    toml = tmp_path / "hypercorn.toml"
    toml.write_text("workers = 4\n")
    assert hypercorn_workers(["/venv/bin/hypercorn", "-w", "3", "app:app"], {}) == 3
    assert hypercorn_workers(["/venv/bin/hypercorn", "--workers=2", "app:app"], {}) == 2
    assert hypercorn_workers(["/venv/bin/hypercorn", "--config", str(toml), "app:app"], {}) == 4
    assert hypercorn_workers(["/x/hypercorn/__main__.py", "-c", f"toml:{toml}", "app:app"], {}) == 4
    assert hypercorn_workers(["/venv/bin/hypercorn", "app:app"], {"WEB_CONCURRENCY": "8"}) == 1
    assert hypercorn_workers(["app.py"], {"WEB_CONCURRENCY": "8"}) == 8
    assert hypercorn_workers(["app.py"], {}) == 1


async def test_memory_store_warns_with_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from msev15.stores.sessions import open_session_store
    from tests.conftest import make_settings

    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    monkeypatch.setattr("sys.argv", ["app.py"])
    with caplog.at_level("WARNING", logger="msev15.stores.sessions"):
        store = await open_session_store(make_settings(tmp_path))
    assert isinstance(store, MemorySessionStore)
    assert "SESSION_STORE=memory with 4 Hypercorn workers" in caplog.text


async def test_sqlite_session_counts_stay_exact_through_every_kind_of_write(
    tmp_path: Path, clock: Clock
) -> None:
    """The per-tenant and total counts that bound new sessions are kept by triggers: after new
    sessions, rewrites, deletes, expiry, eviction and a refusal, from two workers on one file,
    they equal what COUNT(*) finds."""
    import sqlite3

    from msev15.stores.sessions import Message, SessionLimitError

    path = tmp_path / "sessions.db"
    options: dict[str, Any] = {"ttl_seconds": 60, "max_sessions": 6, "max_per_tenant": 4, "clock": clock}
    first = await SqliteSessionStore.open(path, **options)
    second = await SqliteSessionStore.open(path, **options)

    def said(text: str) -> list[Message]:
        return [Message("user", text, clock())]

    def counts() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        with sqlite3.connect(path) as db:
            kept = db.execute("SELECT * FROM chat_session_counts WHERE sessions > 0 ORDER BY 1").fetchall()
            real = db.execute(
                "SELECT tenant_id, COUNT(*) FROM chat_sessions GROUP BY tenant_id"
                " UNION ALL SELECT '', COUNT(*) FROM chat_sessions ORDER BY 1"
            ).fetchall()
        return kept, [row for row in real if row[1] > 0]

    try:
        for i, store in enumerate((first, second) * 2):  # new sessions, from both workers
            await store.save_turn("a", f"s{i}", said("hi"))
        await first.save_turn("a", "s0", said("again"))  # a rewrite adds nothing
        with pytest.raises(SessionLimitError):
            await second.save_turn("a", "s9", said("one too many"))  # a refusal changes nothing
        await second.save_turn("b", "s0", said("hi"))
        await first.save_turn("b", "s1", said("hi"))  # the 7th: the least recently used goes
        assert await first.delete("a", "s2")
        clock.now += 61  # everything expires ...
        await second.save_turn("a", "s1", said("back"))  # ... an expired session starts afresh
        await first.save_turn("b", "s2", said("hi"))  # a new one drops the tenant's expired ones
        await second.purge_expired()
        kept, real = counts()
        assert kept == real == [("", 2), ("a", 1), ("b", 1)]
    finally:
        await first.close()
        await second.close()
