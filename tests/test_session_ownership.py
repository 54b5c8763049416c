# ruff: noqa: F811  (the store fixtures of test_sessions are imported, then named as parameters)
"""Ownership in the session stores: one contract for memory, SQLite and Redis.

A session started for an end user belongs to that user; a user scope sees, lists, changes and
deletes only its own sessions; the tenant-wide scope sees them all, including sessions made
before owners existed (no owner).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from msev15.principal import ANY_USER
from msev15.stores.sessions import Message, SessionOwnedElsewhere
from msev15.stores.sessions.sqlite import SqliteSessionStore
from msev15.stores.sessions.sqlite_ops import SCHEMA_VERSION
from tests.test_sessions import MakeStore, clock, kind, make_store, redis_server  # noqa: F401


def msg(text: str) -> Message:
    return Message("user", text, time.time())


async def test_a_new_session_belongs_to_the_scope_that_made_it(make_store: MakeStore) -> None:
    store = await make_store()
    made = await store.save_turn("t", "s-alice", [msg("hi")], user="alice")
    assert made.user_id == "alice"
    tenant_made = await store.save_turn("t", "s-shop", [msg("hi")])
    assert tenant_made.user_id is None
    found = await store.get("t", "s-alice", user="alice")
    assert found is not None and found.user_id == "alice"
    assert [s.summary()["user_id"] for s in await store.list("t")] == [None, "alice"]


async def test_another_user_sees_nothing_and_changes_nothing(make_store: MakeStore) -> None:
    store = await make_store()
    await store.save_turn("t", "s1", [msg("my address is 1 Main St")], user="alice")
    assert await store.get("t", "s1", user="bob") is None
    assert await store.list("t", user="bob") == []
    with pytest.raises(SessionOwnedElsewhere):
        await store.save_turn("t", "s1", [msg("injected")], metadata={"x": 1}, user="bob")
    assert await store.delete("t", "s1", user="bob") is False
    kept = await store.get("t", "s1", user="alice")
    assert kept is not None and [m.content for m in kept.messages] == ["my address is 1 Main St"]
    assert kept.metadata == {}


async def test_the_tenant_scope_reaches_every_session(make_store: MakeStore) -> None:
    store = await make_store()
    await store.save_turn("t", "s1", [msg("a")], user="alice")
    await store.save_turn("t", "s2", [msg("b")], user="bob")
    await store.save_turn("t", "s3", [msg("c")])
    assert {s.session_id for s in await store.list("t", user=ANY_USER)} == {"s1", "s2", "s3"}
    assert [s.session_id for s in await store.list("t", user="alice")] == ["s1"]
    appended = await store.save_turn("t", "s1", [msg("staff note")])  # tenant-wide may continue it
    assert appended.user_id == "alice" and len(appended.messages) == 2
    assert await store.delete("t", "s2") is True
    assert await store.list("t", user="bob") == []


async def test_a_session_without_owner_is_the_tenants_only(make_store: MakeStore) -> None:
    store = await make_store()
    await store.save_turn("t", "old", [msg("before owners existed")])
    assert await store.get("t", "old", user="alice") is None
    with pytest.raises(SessionOwnedElsewhere):
        await store.save_turn("t", "old", [msg("claim it")], user="alice")
    assert await store.delete("t", "old", user="alice") is False
    assert await store.get("t", "old") is not None


async def test_the_same_user_id_in_two_tenants_is_two_users(make_store: MakeStore) -> None:
    store = await make_store()
    await store.save_turn("t1", "s", [msg("one")], user="u")
    assert await store.get("t2", "s", user="u") is None
    assert await store.list("t2", user="u") == []


async def test_sqlite_sessions_of_version_1_gain_no_owner(tmp_path: Path) -> None:
    """A file written before owners existed opens, keeps its sessions, and gives them to no user."""
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """CREATE TABLE chat_sessions (tenant_id TEXT NOT NULL, session_id TEXT NOT NULL,
            created_at REAL NOT NULL, last_activity REAL NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
            messages TEXT NOT NULL DEFAULT '[]', touched INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant_id, session_id)) WITHOUT ROWID;
            PRAGMA user_version = 1;"""
        )
        now = time.time()
        db.execute("INSERT INTO chat_sessions VALUES ('t', 'legacy', ?, ?, '{}', '[]', 1)", (now, now))
    store = await SqliteSessionStore.open(path)
    try:
        legacy = await store.get("t", "legacy")
        assert legacy is not None and legacy.user_id is None
        assert await store.get("t", "legacy", user="alice") is None
        again = await SqliteSessionStore.open(path)  # a second worker opening the migrated file
        await again.close()
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT * FROM chat_session_counts ORDER BY tenant_id").fetchall() == [
            ("", 1),
            ("t", 1),
        ]
