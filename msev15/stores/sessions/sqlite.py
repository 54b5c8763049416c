"""SqliteSessionStore: sessions in their own SQLite file, so a restart keeps every conversation.

One host: several Hypercorn workers may share the file. Turns on one session are ordered by an
asyncio lock inside each process and by a lease row across processes (renewed while a turn
runs, so a crashed worker's lease simply runs out). Several hosts need the Redis store.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from msev15.jsonio import dumps, loads
from msev15.principal import ANY_USER, UserScope
from msev15.stores import database as sqlitedb
from msev15.stores.sessions.base import (
    LockTable,
    Message,
    Session,
    SessionLimitError,
    SessionOwnedElsewhere,
    SessionStoreUnavailable,
    renewed,
    visible,
)

BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
SCHEMA_VERSION = 2  # 2: sessions record their owner (user_id)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_sessions (
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_activity REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    messages TEXT NOT NULL DEFAULT '[]',
    touched INTEGER NOT NULL DEFAULT 0, -- write order: breaks last_activity ties for LRU and listing
    user_id TEXT, -- the owning end user; NULL: tenant-wide callers only
    PRIMARY KEY (tenant_id, session_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chat_sessions_by_tenant ON chat_sessions (tenant_id, last_activity, touched);
CREATE INDEX IF NOT EXISTS chat_sessions_by_touch ON chat_sessions (touched);
CREATE INDEX IF NOT EXISTS chat_sessions_by_activity ON chat_sessions (last_activity);
CREATE TABLE IF NOT EXISTS chat_session_leases (
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
) WITHOUT ROWID;
"""

# Sessions made before version 2 have no owner: they stay reachable by tenant-wide callers only.
_ADD_OWNER = "ALTER TABLE chat_sessions ADD COLUMN user_id TEXT"
_OWNER_INDEX = (
    "CREATE INDEX IF NOT EXISTS chat_sessions_by_user ON chat_sessions (tenant_id, user_id, last_activity)"
)

_COLUMNS = "tenant_id, session_id, created_at, last_activity, metadata, messages, user_id"


def _owned(user: UserScope) -> tuple[str, tuple[str, ...]]:
    """The WHERE condition that scopes a query to one end user's sessions (none for tenant-wide)."""
    return (" AND user_id = ?", (user,)) if isinstance(user, str) else ("", ())


class SqliteSessionStore:
    """Sessions in a SQLite file (WAL, one reused connection); same rules as the memory store."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        ttl_seconds: float,
        max_sessions: int,
        max_per_tenant: int,
        max_messages: int,
        clock: Any = time.time,
        lock_timeout: float = 30.0,
        lock_wait: float = 125.0,
    ) -> None:
        self._db = db
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions
        self.max_per_tenant = max_per_tenant
        self.max_messages = max_messages
        self.lock_timeout = lock_timeout
        self.lock_wait = lock_wait
        self._clock = clock
        self._locks = LockTable()
        # One connection: statements of two coroutines must never interleave inside a transaction.
        self._serial = asyncio.Lock()
        self._owner = uuid.uuid4().hex

    @classmethod
    async def open(
        cls,
        path: Path,
        ttl_seconds: float = 86_400,
        max_sessions: int = 100_000,
        max_per_tenant: int = 10_000,
        max_messages: int = 200,
        clock: Any = time.time,
        lock_timeout: float = 30.0,
        lock_wait: float = 125.0,
    ) -> SqliteSessionStore:
        """Open (and create) the file, in WAL mode with a busy timeout for other workers."""
        db = await sqlitedb.connect(path, BUSY_TIMEOUT_MS)
        try:
            await db.executescript(_SCHEMA)
            await _add_owner_column(db)
            await db.execute(_OWNER_INDEX)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            await db.close()
            raise
        return cls(
            db, ttl_seconds, max_sessions, max_per_tenant, max_messages, clock, lock_timeout, lock_wait
        )

    # Locking ---------------------------------------------------------------------------

    def lock(self, tenant_id: str, session_id: str) -> Any:
        return self._hold(tenant_id, session_id)

    @contextlib.asynccontextmanager
    async def _hold(self, tenant_id: str, session_id: str) -> AsyncIterator[None]:
        async with self._locks.hold((tenant_id, session_id)):
            await self._acquire_lease(tenant_id, session_id)
            try:
                renew = partial(self._renew_lease, tenant_id, session_id)
                async with renewed(self.lock_timeout / 3, renew, f"session {session_id!r}"):
                    yield
            finally:
                try:
                    await self._write(
                        "DELETE FROM chat_session_leases"
                        " WHERE tenant_id = ? AND session_id = ? AND owner = ?",
                        (tenant_id, session_id, self._owner),
                    )
                except SessionStoreUnavailable:
                    pass  # the lease runs out by itself

    async def _acquire_lease(self, tenant_id: str, session_id: str) -> None:
        """Take the cross-process lease, polling with a growing pause while another worker holds it."""
        deadline = time.monotonic() + self.lock_wait
        pause = 0.01
        while True:
            now = time.time()
            taken = await self._write(
                "INSERT INTO chat_session_leases (tenant_id, session_id, owner, expires_at)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, session_id) DO UPDATE"
                " SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE chat_session_leases.expires_at < ? OR chat_session_leases.owner = excluded.owner",
                (tenant_id, session_id, self._owner, now + self.lock_timeout, now),
            )
            if taken:
                return
            if time.monotonic() + pause > deadline:
                raise SessionStoreUnavailable("another turn on this session is still running; try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _renew_lease(self, tenant_id: str, session_id: str) -> bool:
        changed = await self._write(
            "UPDATE chat_session_leases SET expires_at = ?"
            " WHERE tenant_id = ? AND session_id = ? AND owner = ?",
            (time.time() + self.lock_timeout, tenant_id, session_id, self._owner),
        )
        return changed > 0

    # Reads and writes ------------------------------------------------------------------

    async def _write(self, sql: str, params: Iterable[Any]) -> int:
        """One autocommit statement; returns the number of rows it changed."""
        async with self._serial:
            with _unavailable():
                cursor = await self._db.execute(sql, tuple(params))
                await cursor.close()
                return cursor.rowcount

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        owned, owner = _owned(user)
        async with self._serial:
            with _unavailable():
                async with self._db.execute(
                    f"SELECT {_COLUMNS} FROM chat_sessions"
                    " WHERE tenant_id = ? AND session_id = ? AND last_activity >= ?" + owned,
                    (tenant_id, session_id, self._clock() - self.ttl, *owner),
                ) as cursor:
                    row = await cursor.fetchone()
        return _session(row) if row is not None else None

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
        user: UserScope = ANY_USER,
    ) -> Session:
        now = self._clock()
        cutoff = now - self.ttl
        async with self._serial:
            with _unavailable():
                db = self._db
                # IMMEDIATE: take the write lock now, so two workers never deadlock upgrading a read.
                await db.execute("BEGIN IMMEDIATE")
                try:
                    async with db.execute(
                        "SELECT created_at, last_activity, metadata, messages, user_id FROM chat_sessions"
                        " WHERE tenant_id = ? AND session_id = ?",
                        (tenant_id, session_id),
                    ) as cursor:
                        row = await cursor.fetchone()
                    if row is not None and row[1] < cutoff:  # expired but not yet purged: start afresh
                        row = None
                    if row is None:
                        await self._make_room(tenant_id, session_id, cutoff)
                        created, stored_meta, records = now, "{}", []
                        owner = user if isinstance(user, str) else None
                    elif not visible(row[4], user):
                        raise SessionOwnedElsewhere(session_id)
                    else:
                        created, stored_meta, records, owner = row[0], row[2], loads(row[3]), row[4]
                    records.extend(m.to_record() for m in messages)
                    del records[: max(0, len(records) - self.max_messages)]
                    meta_text = dumps(metadata) if metadata is not None else stored_meta
                    await db.execute(
                        f"INSERT OR REPLACE INTO chat_sessions ({_COLUMNS}, touched)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?,"
                        " (SELECT COALESCE(MAX(touched), 0) + 1 FROM chat_sessions))",
                        (tenant_id, session_id, created, now, meta_text, dumps(records), owner),
                    )
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.OperationalError):  # SQLite may have rolled back itself
                        await db.execute("ROLLBACK")
                    raise
        return Session(
            tenant_id,
            session_id,
            created,
            now,
            [Message.from_record(r) for r in records],
            loads(meta_text),
            owner,
        )

    async def _make_room(self, tenant_id: str, session_id: str, cutoff: float) -> None:
        """Before a new session: drop the tenant's expired ones, refuse over the tenant limit, evict LRU."""
        db = self._db
        await db.execute(
            "DELETE FROM chat_sessions WHERE tenant_id = ? AND (last_activity < ? OR session_id = ?)",
            (tenant_id, cutoff, session_id),
        )
        async with db.execute("SELECT COUNT(*) FROM chat_sessions WHERE tenant_id = ?", (tenant_id,)) as cur:
            (count,) = await cur.fetchone() or (0,)
        if count >= self.max_per_tenant:
            raise SessionLimitError(f"tenant {tenant_id} has reached its limit of sessions")
        async with db.execute("SELECT COUNT(*) FROM chat_sessions") as cur:
            (total,) = await cur.fetchone() or (0,)
        if total >= self.max_sessions:
            await db.execute(
                "DELETE FROM chat_sessions WHERE (tenant_id, session_id) IN"
                " (SELECT tenant_id, session_id FROM chat_sessions ORDER BY touched LIMIT ?)",
                (total - self.max_sessions + 1,),
            )

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]:
        owned, owner = _owned(user)
        async with self._serial:
            with _unavailable():
                async with self._db.execute(
                    f"SELECT {_COLUMNS} FROM chat_sessions WHERE tenant_id = ? AND last_activity >= ?"
                    + owned
                    + " ORDER BY last_activity DESC, touched DESC",
                    (tenant_id, self._clock() - self.ttl, *owner),
                ) as cursor:
                    rows = await cursor.fetchall()
        return [_session(row) for row in rows]

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool:
        owned, owner = _owned(user)
        async with self._serial:
            with _unavailable():
                async with self._db.execute(
                    "DELETE FROM chat_sessions WHERE tenant_id = ? AND session_id = ?"
                    + owned
                    + " RETURNING last_activity",
                    (tenant_id, session_id, *owner),
                ) as cursor:
                    row = await cursor.fetchone()
        return row is not None and row[0] >= self._clock() - self.ttl

    async def purge_expired(self) -> int:
        removed = await self._write(
            "DELETE FROM chat_sessions WHERE last_activity < ?", (self._clock() - self.ttl,)
        )
        await self._write("DELETE FROM chat_session_leases WHERE expires_at < ?", (time.time(),))
        return removed

    async def check(self) -> str:
        async with self._serial:
            with _unavailable():
                async with self._db.execute("SELECT 1") as cursor:
                    await cursor.fetchone()
        return "ok"

    async def close(self) -> None:
        await self._db.close()


async def _add_owner_column(db: aiosqlite.Connection) -> None:
    """Version 1 files gain the owner column; a worker that loses the race to add it goes on."""
    async with db.execute("PRAGMA table_info(chat_sessions)") as cursor:
        columns = {row[1] for row in await cursor.fetchall()}
    if "user_id" in columns:
        return
    try:
        await db.execute(_ADD_OWNER)
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc).lower():
            raise


def _session(row: Any) -> Session:
    tenant_id, session_id, created, last, meta, records, owner = row
    return Session(
        tenant_id,
        session_id,
        created,
        last,
        [Message.from_record(r) for r in loads(records)],
        loads(meta),
        owner,
    )


@contextlib.contextmanager
def _unavailable() -> Any:
    """SQLite failures (file locked past the busy timeout, disk errors) become a clear 503."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise SessionStoreUnavailable(f"session database: {exc}") from exc
