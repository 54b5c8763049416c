"""SessionStore contract (memory now; the durable stores join the same suite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from msev15.sessions import MemorySessionStore, Message, SessionLimitError, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[SessionStore]:
    memory = MemorySessionStore(
        ttl_seconds=60, max_sessions=1000, max_per_tenant=100, max_messages=50, clock=clock
    )
    yield memory
    await memory.close()


def turn(text: str) -> list[Message]:
    return [Message("user", text, 1.0), Message("assistant", f"re: {text}", 2.0)]


async def test_save_get_history(store: SessionStore) -> None:
    assert await store.get("t", "s") is None
    saved = await store.save_turn("t", "s", turn("a"))
    assert [m.content for m in saved.messages] == ["a", "re: a"]
    await store.save_turn("t", "s", turn("b"), metadata={"k": 1})
    found = await store.get("t", "s")
    assert found is not None
    assert [m.content for m in found.messages] == ["a", "re: a", "b", "re: b"]
    assert found.metadata == {"k": 1}


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
    # "a:b" + "c" and "a" + "b:c" are different sessions.
    await store.save_turn("a:b", "c", turn("x"))
    assert await store.get("a", "b:c") is None


async def test_lock_orders_concurrent_turns(store: SessionStore) -> None:
    order: list[str] = []

    async def run(name: str, pause: float) -> None:
        async with store.lock("t", "s"):
            order.append(f"{name}-start")
            await asyncio.sleep(pause)
            await store.save_turn("t", "s", turn(name))
            order.append(f"{name}-end")

    await asyncio.gather(run("first", 0.02), run("second", 0))
    assert order == ["first-start", "first-end", "second-start", "second-end"]
    found = await store.get("t", "s")
    assert found is not None and [m.content for m in found.messages][::2] == ["first", "second"]


async def test_other_sessions_not_blocked_by_a_lock(store: SessionStore) -> None:
    async with store.lock("t", "busy"):
        async with asyncio.timeout(1):
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
    clock.now += 61
    assert await store.purge_expired() == 1
    assert await store.list("t") == []


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
    assert [s.session_id for s in await store.list("t")] == ["a", "c", "b"]


async def test_max_messages_keeps_newest(store: SessionStore) -> None:
    for i in range(30):
        await store.save_turn("t", "s", turn(str(i)))
    found = await store.get("t", "s")
    assert found is not None and len(found.messages) == 50
    assert found.messages[-2].content == "29" and found.messages[0].content == "5"


async def test_lru_eviction_and_tenant_limit(clock: Clock) -> None:
    store = MemorySessionStore(ttl_seconds=60, max_sessions=3, max_per_tenant=2, clock=clock)
    await store.save_turn("A", "1", turn("x"))
    await store.save_turn("B", "1", turn("x"))
    await store.save_turn("A", "1", turn("touch"))  # A:1 is now the most recent
    await store.save_turn("C", "1", turn("x"))
    await store.save_turn("D", "1", turn("x"))  # over 3: the least recently used (B:1) goes
    assert await store.get("B", "1") is None
    assert await store.get("A", "1") is not None

    limited = MemorySessionStore(ttl_seconds=60, max_sessions=100, max_per_tenant=2, clock=clock)
    await limited.save_turn("A", "1", turn("x"))
    await limited.save_turn("A", "2", turn("x"))
    with pytest.raises(SessionLimitError):
        await limited.save_turn("A", "3", turn("x"))
    await limited.save_turn("A", "2", turn("existing sessions still take turns"))
    await limited.save_turn("B", "1", turn("other tenants are not affected"))
    clock.now += 61  # expired sessions make room again
    await limited.save_turn("A", "3", turn("x"))


async def test_locks_are_dropped_when_idle(clock: Clock) -> None:
    store = MemorySessionStore(clock=clock)
    async with store.lock("t", "s"):
        pass
    assert len(store._locks) == 0
