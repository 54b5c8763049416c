"""SqliteSessionStore: sessions in their own SQLite file, so a restart keeps every conversation.

One host: several Hypercorn workers may share the file. Turns on one session are ordered by an
asyncio lock inside each process and by a lease row across processes (renewed while a turn
runs, so a crashed worker's lease simply runs out). Several hosts need the Redis store.

Every store call is one function run in the connection's own thread (one hop off the event
loop); the writes that queue up together share one short transaction (stores/sqlite_thread.py):
workers contend only for SQLite's write lock, briefly, never for a Python lock held across an
await. Taking the lease also reads the session, which the turn
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
from msev15.stores.sessions import sqlite_ops as ops
from msev15.stores.sessions.base import (
    LockTable,
    Message,
    Session,
    SessionStoreUnavailable,
    renewed,
)
from msev15.stores.sqlite_thread import SqliteThread

T = TypeVar("T")
BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
CHECKPOINT_SECONDS = 1.0  # the WAL goes back into the file this often, off the turns' path


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
        db = await SqliteThread.open(path, BUSY_TIMEOUT_MS, checkpoint_seconds=CHECKPOINT_SECONDS)
        try:
            await db.run(ops.migrate)
        except BaseException:
            await db.close()
            raise
        return cls(
            db, ttl_seconds, max_sessions, max_per_tenant, max_messages, clock, lock_timeout, lock_wait
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """A write: in a transaction with the writes queued beside it (group commit)."""
        with _unavailable():
            return await self._db.together(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """A read: on its own (WAL readers never wait for the write lock)."""
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
                        await self._call(ops.drop_lease, tenant_id, session_id, self._owner)
                    except SessionStoreUnavailable:
                        pass  # the lease runs out by itself

    async def _acquire_lease(self, tenant_id: str, session_id: str) -> Any:
        """Take the cross-process lease, polling with a growing pause while another worker holds it;
        the session's row (or None) as it is once the lease is ours."""
        deadline = time.monotonic() + self.lock_wait
        pause = 0.01
        while True:
            taken, row = await self._call(
                ops.take_lease, tenant_id, session_id, self._owner, self.lock_timeout
            )
            if taken:
                return row
            if time.monotonic() + pause > deadline:
                raise SessionStoreUnavailable("another turn on this session is still running; try again")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _renew_lease(self, held: _Held) -> bool:
        if held.released:
            return True  # the turn is done with it
        return await self._call(
            ops.renew_lease, held.tenant_id, held.session_id, self._owner, self.lock_timeout
        )

    # Reads and writes ------------------------------------------------------------------

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        cutoff = self._clock() - self.ttl
        held = _holding(tenant_id, session_id)
        if held is not None:
            # Read with this turn's lease: no other turn has written it since, and none can.
            row = held.row
            if row is not None and (row[3] < cutoff or (isinstance(user, str) and row[6] != user)):
                row = None  # what ops.read's WHERE would have left out
        else:
            row = await self._read(ops.read, tenant_id, session_id, cutoff, user)
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
        row = await self._call(ops.save, tenant_id, session_id, records, meta, user, now, limits, release)
        if held is not None:
            held.row, held.released = row, release is not None  # the holder's next read sees its write
        return _session(row)

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]:
        rows = await self._read(ops.list_sessions, tenant_id, self._clock() - self.ttl, user)
        return [_session(row) for row in rows]

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool:
        return await self._call(ops.delete, tenant_id, session_id, self._clock() - self.ttl, user)

    async def purge_expired(self) -> int:
        return await self._call(ops.purge, self._clock() - self.ttl)

    async def check(self) -> str:
        await self._read(ops.ping)
        return "ok"

    async def close(self) -> None:
        await self._db.close()


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
