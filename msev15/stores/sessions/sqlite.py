"""SqliteSessionStore: sessions in their own SQLite file, so a restart keeps every conversation.

One host: several Hypercorn workers may share the file. Turns on one session are ordered by an
asyncio lock inside each process and by a lease row across processes (renewed while a turn
runs, so a crashed worker's lease simply runs out). Several hosts need the Redis store.

Every store call is one function run in the connection's own thread (one hop off the event
loop, one short transaction): workers contend only for SQLite's write lock, briefly, never for
a Python lock held across an await. Taking the lease also reads the session, which the turn
holding it then gets without another call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from msev15.jsonio import dumps, loads
from msev15.principal import ANY_USER, UserScope
from msev15.stores import database as sqlitedb
from msev15.stores.database import SqliteThread
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

T = TypeVar("T")
BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
SCHEMA_VERSION = 3  # 2: sessions record their owner (user_id); 3: session counts kept by triggers

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

# Version 3: how many sessions each tenant (and, under '', which no tenant id can be) holds, kept
# in step by triggers in the writing transaction, so a new session's limits cost two point reads
# instead of two COUNT(*) scans (12 ms at 100,000 sessions, inside the write lock).
_COUNTS = """
CREATE TABLE IF NOT EXISTS chat_session_counts (
    tenant_id TEXT PRIMARY KEY,
    sessions INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS chat_sessions_count_in AFTER INSERT ON chat_sessions BEGIN
    INSERT INTO chat_session_counts (tenant_id, sessions) VALUES (NEW.tenant_id, 1), ('', 1)
        ON CONFLICT (tenant_id) DO UPDATE SET sessions = sessions + 1;
END;
CREATE TRIGGER IF NOT EXISTS chat_sessions_count_out AFTER DELETE ON chat_sessions BEGIN
    UPDATE chat_session_counts SET sessions = sessions - 1 WHERE tenant_id IN (OLD.tenant_id, '');
END;
"""
_RECOUNT = """
DELETE FROM chat_session_counts;
INSERT INTO chat_session_counts (tenant_id, sessions)
    SELECT tenant_id, COUNT(*) FROM chat_sessions GROUP BY tenant_id
    UNION ALL SELECT '', COUNT(*) FROM chat_sessions;
"""

_COLUMNS = "tenant_id, session_id, created_at, last_activity, metadata, messages, user_id"


@dataclass(slots=True)
class _Held:
    """The session a turn (task) holds the lease of, as read with it and as the turn last wrote it."""

    tenant_id: str
    session_id: str
    row: Any
    released: bool = False  # by the turn's last save, in the same transaction


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("held_session", default=None)


def _holding(tenant_id: str, session_id: str) -> _Held | None:
    held = _HELD.get()
    if held is None or held.released or (held.tenant_id, held.session_id) != (tenant_id, session_id):
        return None
    return held


def _owned(user: UserScope) -> tuple[str, tuple[str, ...]]:
    """The WHERE condition that scopes a query to one end user's sessions (none for tenant-wide)."""
    return (" AND user_id = ?", (user,)) if isinstance(user, str) else ("", ())


class SqliteSessionStore:
    """Sessions in a SQLite file (WAL, one connection in its own thread); same rules as the memory store."""

    def __init__(
        self,
        db: SqliteThread,
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
        db = await SqliteThread.open(path, BUSY_TIMEOUT_MS)
        try:
            await db.run(_migrate)
        except BaseException:
            await db.close()
            raise
        return cls(
            db, ttl_seconds, max_sessions, max_per_tenant, max_messages, clock, lock_timeout, lock_wait
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        with _unavailable():
            return await self._db.run(fn, *args)

    # Locking ---------------------------------------------------------------------------

    def lock(self, tenant_id: str, session_id: str) -> Any:
        return self._hold(tenant_id, session_id)

    @contextlib.asynccontextmanager
    async def _hold(self, tenant_id: str, session_id: str) -> AsyncIterator[None]:
        async with self._locks.hold((tenant_id, session_id)):
            held = _Held(tenant_id, session_id, await self._acquire_lease(tenant_id, session_id))
            token = _HELD.set(held)
            try:
                renew = partial(self._renew_lease, held)
                async with renewed(self.lock_timeout / 3, renew, f"session {session_id!r}"):
                    yield
            finally:
                _HELD.reset(token)
                if not held.released:
                    try:
                        await self._call(_drop_lease, tenant_id, session_id, self._owner)
                    except SessionStoreUnavailable:
                        pass  # the lease runs out by itself

    async def _acquire_lease(self, tenant_id: str, session_id: str) -> Any:
        """Take the cross-process lease, polling with a growing pause while another worker holds it;
        the session's row (or None) as it is once the lease is ours."""
        deadline = time.monotonic() + self.lock_wait
        pause = 0.01
        while True:
            taken, row = await self._call(_take_lease, tenant_id, session_id, self._owner, self.lock_timeout)
            if taken:
                return row
            if time.monotonic() + pause > deadline:
                raise SessionStoreUnavailable("another turn on this session is still running; try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _renew_lease(self, held: _Held) -> bool:
        if held.released:
            return True  # the turn is done with it
        return await self._call(_renew_lease, held.tenant_id, held.session_id, self._owner, self.lock_timeout)

    # Reads and writes ------------------------------------------------------------------

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        cutoff = self._clock() - self.ttl
        held = _holding(tenant_id, session_id)
        if held is not None:
            # Read with this turn's lease: no other turn has written it since, and none can.
            row = held.row
            if row is not None and (row[3] < cutoff or (isinstance(user, str) and row[6] != user)):
                row = None  # what _read's WHERE would have left out
        else:
            row = await self._call(_read, tenant_id, session_id, cutoff, user)
        return _session(row) if row is not None else None

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
        user: UserScope = ANY_USER,
        last: bool = False,
    ) -> Session:
        now = self._clock()
        records = [m.to_record() for m in messages]
        meta = dumps(metadata) if metadata is not None else None
        limits = (self.ttl, self.max_sessions, self.max_per_tenant, self.max_messages)
        held = _holding(tenant_id, session_id)
        release = self._owner if last and held is not None else None  # the lease goes with this write
        row = await self._call(_save, tenant_id, session_id, records, meta, user, now, limits, release)
        if held is not None:
            held.row, held.released = row, release is not None  # the holder's next read sees its write
        return _session(row)

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]:
        rows = await self._call(_list, tenant_id, self._clock() - self.ttl, user)
        return [_session(row) for row in rows]

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool:
        return await self._call(_delete, tenant_id, session_id, self._clock() - self.ttl, user)

    async def purge_expired(self) -> int:
        return await self._call(_purge, self._clock() - self.ttl)

    async def check(self) -> str:
        await self._call(_ping)
        return "ok"

    async def close(self) -> None:
        await self._db.close()


# What runs in the connection's thread: plain functions of the connection -----------------------


def _migrate(db: sqlite3.Connection) -> None:
    db.executescript(_SCHEMA)
    _add_owner_column(db)
    db.execute(_OWNER_INDEX)
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version < 3:  # counted in one write transaction: exact however many workers start together
        db.executescript(f"BEGIN IMMEDIATE; {_COUNTS} {_RECOUNT} PRAGMA user_version = 3; COMMIT;")
    db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")


def _add_owner_column(db: sqlite3.Connection) -> None:
    """Version 1 files gain the owner column; a worker that loses the race to add it goes on."""
    if "user_id" in {row[1] for row in db.execute("PRAGMA table_info(chat_sessions)")}:
        return
    try:
        db.execute(_ADD_OWNER)
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc).lower():
            raise


def _take_lease(
    db: sqlite3.Connection, tenant_id: str, session_id: str, owner: str, lease: float
) -> tuple[bool, Any]:
    """Whether the lease is ours now, and then the session's row (unfiltered: the caller applies
    the expiry and owner rules of `_read`)."""
    now = time.time()
    cursor = db.execute(
        "INSERT INTO chat_session_leases (tenant_id, session_id, owner, expires_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, session_id) DO UPDATE"
        " SET owner = excluded.owner, expires_at = excluded.expires_at"
        " WHERE chat_session_leases.expires_at < ? OR chat_session_leases.owner = excluded.owner",
        (tenant_id, session_id, owner, now + lease, now),
    )
    if cursor.rowcount <= 0:
        return False, None
    row = db.execute(
        f"SELECT {_COLUMNS} FROM chat_sessions WHERE tenant_id = ? AND session_id = ?",
        (tenant_id, session_id),
    ).fetchone()
    return True, row


def _renew_lease(db: sqlite3.Connection, tenant_id: str, session_id: str, owner: str, lease: float) -> bool:
    cursor = db.execute(
        "UPDATE chat_session_leases SET expires_at = ? WHERE tenant_id = ? AND session_id = ? AND owner = ?",
        (time.time() + lease, tenant_id, session_id, owner),
    )
    return cursor.rowcount > 0


def _drop_lease(db: sqlite3.Connection, tenant_id: str, session_id: str, owner: str) -> None:
    db.execute(
        "DELETE FROM chat_session_leases WHERE tenant_id = ? AND session_id = ? AND owner = ?",
        (tenant_id, session_id, owner),
    )


def _read(db: sqlite3.Connection, tenant_id: str, session_id: str, cutoff: float, user: UserScope) -> Any:
    owned, owner = _owned(user)
    return db.execute(
        f"SELECT {_COLUMNS} FROM chat_sessions WHERE tenant_id = ? AND session_id = ? AND last_activity >= ?"
        + owned,
        (tenant_id, session_id, cutoff, *owner),
    ).fetchone()


def _save(
    db: sqlite3.Connection,
    tenant_id: str,
    session_id: str,
    new_records: list[dict[str, Any]],
    meta: str | None,
    user: UserScope,
    now: float,
    limits: tuple[float, int, int, int],
    release: str | None = None,
) -> tuple[Any, ...]:
    ttl, max_sessions, max_per_tenant, max_messages = limits
    cutoff = now - ttl
    with _transaction(db):
        row = db.execute(
            "SELECT created_at, last_activity, metadata, messages, user_id FROM chat_sessions"
            " WHERE tenant_id = ? AND session_id = ?",
            (tenant_id, session_id),
        ).fetchone()
        if row is not None and row[1] < cutoff:  # expired but not yet purged: start afresh
            row = None
        if row is None:
            _make_room(db, tenant_id, session_id, cutoff, max_sessions, max_per_tenant)
            created, stored_meta, records = now, "{}", []
            owner = user if isinstance(user, str) else None
        elif not visible(row[4], user):
            raise SessionOwnedElsewhere(session_id)
        else:
            created, stored_meta, records, owner = row[0], row[2], loads(row[3]), row[4]
        records.extend(new_records)
        del records[: max(0, len(records) - max_messages)]
        meta_text = meta if meta is not None else stored_meta
        saved = (tenant_id, session_id, created, now, meta_text, dumps(records), owner)
        db.execute(  # an upsert, not OR REPLACE: a replaced row would fire no delete trigger
            f"INSERT INTO chat_sessions ({_COLUMNS}, touched) VALUES (?, ?, ?, ?, ?, ?, ?,"
            " (SELECT COALESCE(MAX(touched), 0) + 1 FROM chat_sessions))"
            " ON CONFLICT (tenant_id, session_id) DO UPDATE SET created_at = excluded.created_at,"
            " last_activity = excluded.last_activity, metadata = excluded.metadata,"
            " messages = excluded.messages, user_id = excluded.user_id, touched = excluded.touched",
            saved,
        )
        if release is not None:
            _drop_lease(db, tenant_id, session_id, release)
    return saved


def _make_room(
    db: sqlite3.Connection,
    tenant_id: str,
    session_id: str,
    cutoff: float,
    max_sessions: int,
    max_per_tenant: int,
) -> None:
    """Before a new session: drop the tenant's expired ones, refuse over the tenant limit, evict LRU."""
    db.execute("DELETE FROM chat_sessions WHERE tenant_id = ? AND session_id = ?", (tenant_id, session_id))
    db.execute("DELETE FROM chat_sessions WHERE tenant_id = ? AND last_activity < ?", (tenant_id, cutoff))
    counts = dict(
        db.execute(
            "SELECT tenant_id, sessions FROM chat_session_counts WHERE tenant_id IN (?, '')", (tenant_id,)
        ).fetchall()
    )
    if counts.get(tenant_id, 0) >= max_per_tenant:
        raise SessionLimitError(f"tenant {tenant_id} has reached its limit of sessions")
    total = counts.get("", 0)
    if total >= max_sessions:
        db.execute(
            "DELETE FROM chat_sessions WHERE (tenant_id, session_id) IN"
            " (SELECT tenant_id, session_id FROM chat_sessions ORDER BY touched LIMIT ?)",
            (total - max_sessions + 1,),
        )


def _list(db: sqlite3.Connection, tenant_id: str, cutoff: float, user: UserScope) -> list[Any]:
    owned, owner = _owned(user)
    return db.execute(
        f"SELECT {_COLUMNS} FROM chat_sessions WHERE tenant_id = ? AND last_activity >= ?"
        + owned
        + " ORDER BY last_activity DESC, touched DESC",
        (tenant_id, cutoff, *owner),
    ).fetchall()


def _delete(db: sqlite3.Connection, tenant_id: str, session_id: str, cutoff: float, user: UserScope) -> bool:
    owned, owner = _owned(user)
    row = db.execute(
        "DELETE FROM chat_sessions WHERE tenant_id = ? AND session_id = ?"
        + owned
        + " RETURNING last_activity",
        (tenant_id, session_id, *owner),
    ).fetchone()
    return row is not None and row[0] >= cutoff


def _purge(db: sqlite3.Connection, cutoff: float) -> int:
    removed = db.execute("DELETE FROM chat_sessions WHERE last_activity < ?", (cutoff,)).rowcount
    db.execute("DELETE FROM chat_session_leases WHERE expires_at < ?", (time.time(),))
    return removed


def _ping(db: sqlite3.Connection) -> None:
    db.execute("SELECT 1").fetchone()


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """IMMEDIATE: take the write lock first, so two workers never deadlock upgrading a read."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.OperationalError):  # SQLite may have rolled back itself
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _session(row: Any) -> Session:
    tenant_id, session_id, created, last, meta, records, owner = row
    records = loads(records) if isinstance(records, str) else records
    return Session(
        tenant_id,
        session_id,
        created,
        last,
        [Message.from_record(r) for r in records],
        loads(meta),
        owner,
    )


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """SQLite failures (file locked past the busy timeout, disk errors) become a clear 503."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise SessionStoreUnavailable(f"session database: {exc}") from exc
