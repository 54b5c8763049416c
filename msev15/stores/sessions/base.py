"""The session seam: messages, sessions, the store protocol and the helpers every backend shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from msev15.principal import ANY_USER, UserScope

log = logging.getLogger(__name__)

SessionKey = tuple[str, str]  # (tenant_id, session_id): a tuple, since ids may contain ':'


# Kept in the record for the model's later turns, left out of the public history (API.md's shape).
PRIVATE_CALL_FIELDS = frozenset({"result"})


@dataclass(slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str
    timestamp: float
    # [{id, name, arguments, ok, decision?, result?}]: `result` is what the model read back (clipped);
    # records written before results were kept have none, and still load.
    tool_calls: list[dict[str, Any]] | None = None
    interrupted: bool = False

    def to_api(self) -> dict[str, Any]:
        from msev15.jsonio import iso

        out: dict[str, Any] = {"role": self.role, "content": self.content, "timestamp": iso(self.timestamp)}
        if self.tool_calls:
            out["tool_calls"] = [
                {k: v for k, v in call.items() if k not in PRIVATE_CALL_FIELDS} for call in self.tool_calls
            ]
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
    user_id: str | None = None  # the end user who owns it; None: tenant-wide callers only

    def summary(self) -> dict[str, Any]:
        from msev15.jsonio import iso

        return {
            "session_id": self.session_id,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "message_count": len(self.messages),
            "created_at": iso(self.created_at),
            "last_activity": iso(self.last_activity),
        }


class SessionLimitError(Exception):
    """A tenant has as many sessions as it may keep."""


class SessionOwnedElsewhere(Exception):
    """The session exists but belongs to another end user (or to none); callers answer "not found"."""


def visible(owner: str | None, user: UserScope) -> bool:
    """A tenant-wide scope sees every session; a user sees only the sessions it owns."""
    return user is ANY_USER or owner == user


class SessionStoreUnavailable(Exception):
    """The session store cannot be reached (or a session stays busy); the API answers 503."""


class SessionStore(Protocol):
    """Where conversations live.

    Args (shared by the methods): `tenant_id` and `session_id` together name one session;
    the same session id in two tenants is two unrelated sessions. `user` scopes every read and
    write to one end user's sessions (ANY_USER: the whole tenant); the store checks it in its
    own query, and a session a new turn creates belongs to that user.
    """

    def lock(self, tenant_id: str, session_id: str) -> Any:
        """An async context manager held for a whole turn, so turns on one session run in order."""
        ...

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        """The session, or None when it is absent, expired or not visible to `user`."""
        ...

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
        user: UserScope = ANY_USER,
        last: bool = False,
    ) -> Session:
        """Append a turn's messages (and replace metadata when given) atomically; creates the session.

        `last`: the lock holder's final write of its turn (it leaves the lock right after); a store
        whose lock is a record of its own may release it in the same write.
        Raises SessionOwnedElsewhere when the session exists but `user` may not see it.
        """
        ...

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]: ...

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool: ...

    async def purge_expired(self) -> int: ...

    async def check(self) -> str: ...

    async def close(self) -> None: ...


class LockTable:
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
