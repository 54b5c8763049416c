"""SessionStore: the conversation per tenant and session, with a per-session turn lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import tomllib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)

SessionKey = tuple[str, str]  # (tenant_id, session_id): a tuple, since ids may contain ':'


@dataclass(slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str
    timestamp: float
    tool_calls: list[dict[str, Any]] | None = None
    interrupted: bool = False

    def to_api(self) -> dict[str, Any]:
        from .jsonio import iso

        out: dict[str, Any] = {"role": self.role, "content": self.content, "timestamp": iso(self.timestamp)}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.interrupted:
            out["interrupted"] = True
        return out

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content, "timestamp": self.timestamp}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.interrupted:
            out["interrupted"] = True
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Message:
        return cls(
            record["role"],
            record["content"],
            record["timestamp"],
            record.get("tool_calls"),
            record.get("interrupted", False),
        )


@dataclass(slots=True)
class Session:
    tenant_id: str
    session_id: str
    created_at: float
    last_activity: float
    messages: list[Message] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        from .jsonio import iso

        return {
            "session_id": self.session_id,
            "tenant_id": self.tenant_id,
            "message_count": len(self.messages),
            "created_at": iso(self.created_at),
            "last_activity": iso(self.last_activity),
        }


class SessionLimitError(Exception):
    """A tenant has as many sessions as it may keep."""


class SessionStoreUnavailable(Exception):
    """The session store cannot be reached (or a session stays busy); the API answers 503."""


class SessionStore(Protocol):
    """Where conversations live.

    Args (shared by the methods): `tenant_id` and `session_id` together name one session;
    the same session id in two tenants is two unrelated sessions.
    """

    def lock(self, tenant_id: str, session_id: str) -> Any:
        """An async context manager held for a whole turn, so turns on one session run in order."""
        ...

    async def get(self, tenant_id: str, session_id: str) -> Session | None: ...

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        """Append a turn's messages (and replace metadata when given) atomically; creates the session."""
        ...

    async def list(self, tenant_id: str) -> list[Session]: ...

    async def delete(self, tenant_id: str, session_id: str) -> bool: ...

    async def purge_expired(self) -> int: ...

    async def check(self) -> str: ...

    async def close(self) -> None: ...


class _LockTable:
    """One asyncio.Lock per busy session, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[SessionKey, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: SessionKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class MemorySessionStore:
    """In-process sessions: bounded by TTL and count, least recently used evicted first."""

    def __init__(
        self,
        ttl_seconds: float = 86_400,
        max_sessions: int = 100_000,
        max_per_tenant: int = 10_000,
        max_messages: int = 200,
        clock: Any = time.time,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_sessions = max_sessions
        self.max_per_tenant = max_per_tenant
        self.max_messages = max_messages
        self._clock = clock
        self._sessions: OrderedDict[SessionKey, Session] = OrderedDict()
        self._per_tenant: dict[str, int] = {}
        self._locks = _LockTable()

    def lock(self, tenant_id: str, session_id: str) -> Any:
        return self._locks.hold((tenant_id, session_id))

    def _live(self, key: SessionKey) -> Session | None:
        session = self._sessions.get(key)
        if session is None:
            return None
        if self._clock() - session.last_activity > self.ttl:
            self._remove(key)
            return None
        return session

    async def get(self, tenant_id: str, session_id: str) -> Session | None:
        return self._live((tenant_id, session_id))

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        key = (tenant_id, session_id)
        now = self._clock()
        session = self._live(key)
        if session is None:
            if self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
                self._purge_tenant(tenant_id)
                if self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
                    raise SessionLimitError(f"tenant {tenant_id} has reached its limit of sessions")
            session = Session(tenant_id, session_id, now, now)
            self._sessions[key] = session
            self._per_tenant[tenant_id] = self._per_tenant.get(tenant_id, 0) + 1
            while len(self._sessions) > self.max_sessions:
                self._remove(next(iter(self._sessions)))
        session.messages.extend(messages)
        if len(session.messages) > self.max_messages:
            del session.messages[: len(session.messages) - self.max_messages]
        if metadata is not None:
            session.metadata = metadata
        session.last_activity = now
        self._sessions.move_to_end(key)
        return session

    async def list(self, tenant_id: str) -> list[Session]:
        await self.purge_expired()
        found = [s for (tenant, _), s in self._sessions.items() if tenant == tenant_id]
        found.reverse()  # most recently active first
        return found

    async def delete(self, tenant_id: str, session_id: str) -> bool:
        key = (tenant_id, session_id)
        if self._live(key) is None:
            return False
        self._remove(key)
        return True

    async def purge_expired(self) -> int:
        cutoff = self._clock() - self.ttl
        removed = 0
        # Oldest activity first: stop at the first live one.
        while self._sessions:
            key, session = next(iter(self._sessions.items()))
            if session.last_activity >= cutoff:
                break
            self._remove(key)
            removed += 1
        return removed

    def _purge_tenant(self, tenant_id: str) -> None:
        cutoff = self._clock() - self.ttl
        for key in [k for k, s in self._sessions.items() if k[0] == tenant_id and s.last_activity < cutoff]:
            self._remove(key)

    def _remove(self, key: SessionKey) -> None:
        if self._sessions.pop(key, None) is not None:
            left = self._per_tenant.get(key[0], 1) - 1
            if left:
                self._per_tenant[key[0]] = left
            else:
                self._per_tenant.pop(key[0], None)

    async def check(self) -> str:
        return "ok"

    async def close(self) -> None:
        self._sessions.clear()
        self._per_tenant.clear()

    def __len__(self) -> int:
        return len(self._sessions)


# Choosing and opening a store --------------------------------------------------------------


async def open_session_store(settings: Settings) -> SessionStore:
    """The store SESSION_STORE names; durable stores open lazily, so a down Redis does not stop the start."""
    lock_wait = settings.turn_timeout_seconds + 5  # a waiting turn outlasts the one it waits for
    if settings.session_store == "sqlite":
        from .sessions_sqlite import SqliteSessionStore

        return await SqliteSessionStore.open(
            settings.session_db_path,
            ttl_seconds=settings.session_ttl_seconds,
            max_sessions=settings.max_sessions,
            max_per_tenant=settings.max_sessions_per_tenant,
            max_messages=settings.max_messages_per_session,
            lock_wait=lock_wait,
        )
    if settings.session_store == "redis":
        from .sessions_redis import RedisSessionStore

        return await RedisSessionStore.open(
            settings.redis_url,
            ttl_seconds=settings.session_ttl_seconds,
            max_per_tenant=settings.max_sessions_per_tenant,
            max_messages=settings.max_messages_per_session,
            lock_wait=lock_wait,
        )
    workers = hypercorn_workers()
    if workers > 1:
        log.warning(
            "SESSION_STORE=memory with %d Hypercorn workers: each worker process keeps its own sessions, "
            "so a conversation forgets itself when a request lands on another worker. "
            "Use SESSION_STORE=sqlite (one host) or SESSION_STORE=redis (several hosts), or workers = 1.",
            workers,
        )
    return MemorySessionStore(
        ttl_seconds=settings.session_ttl_seconds,
        max_sessions=settings.max_sessions,
        max_per_tenant=settings.max_sessions_per_tenant,
        max_messages=settings.max_messages_per_session,
    )


def hypercorn_workers(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Hypercorn's worker count as far as the app can tell (the server does not tell its app).

    Hypercorn spawns its workers, which inherit its command line: `-w N`/`--workers N` wins,
    then `workers` in the `--config` TOML file. Outside Hypercorn's command line (`python app.py`
    serves one process) `WEB_CONCURRENCY` is the only hint.
    """
    argv = sys.argv if argv is None else argv
    env = dict(os.environ) if env is None else env
    program = Path(argv[0]) if argv else Path()
    if program.name == "hypercorn" or (program.name == "__main__.py" and program.parent.name == "hypercorn"):
        workers = _flag(argv, "-w", "--workers")
        if workers is not None:
            return _int(workers)
        config = _flag(argv, "-c", "--config")
        if config is not None and not config.startswith(("python:", "file:")):
            try:
                with open(config.removeprefix("toml:"), "rb") as fh:
                    return _int(str(tomllib.load(fh).get("workers", 1)))
            except (OSError, tomllib.TOMLDecodeError):
                return 1
        return 1
    return _int(env.get("WEB_CONCURRENCY", "1"))


def _flag(argv: list[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return 1


@asynccontextmanager
async def renewed(interval: float, renew: Callable[[], Awaitable[bool]], what: str) -> AsyncIterator[None]:
    """Keep a lease alive while the block runs (a long turn), and stop renewing when it ends."""
    renewal = asyncio.create_task(renew_every(interval, renew, what))
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal


async def renew_every(interval: float, renew: Callable[[], Awaitable[bool]], what: str) -> None:
    """Keep a lease alive while a long turn runs; a lost lease is logged, the turn goes on."""
    while True:
        await asyncio.sleep(interval)
        try:
            if not await renew():
                log.error("the lock on %s was lost before the turn ended", what)
                return
        except Exception as exc:  # the store may be briefly down; the lease outlives a few misses
            log.warning("could not renew the lock on %s: %s", what, exc)
