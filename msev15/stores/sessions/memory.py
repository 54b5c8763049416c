"""MemorySessionStore: the default, in-process and bounded."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from msev15.principal import ANY_USER, UserScope
from msev15.stores.sessions.base import (
    LockTable,
    Message,
    Session,
    SessionKey,
    SessionLimitError,
    SessionOwnedElsewhere,
    visible,
)


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
        self._locks = LockTable()

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

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        session = self._live((tenant_id, session_id))
        return session if session is not None and visible(session.user_id, user) else None

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
        user: UserScope = ANY_USER,
        last: bool = False,  # noqa: ARG002 - the lock is released on leaving it
    ) -> Session:
        key = (tenant_id, session_id)
        now = self._clock()
        session = self._live(key)
        if session is not None and not visible(session.user_id, user):
            raise SessionOwnedElsewhere(session_id)
        if session is None:
            if self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
                self._purge_tenant(tenant_id)
                if self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
                    raise SessionLimitError(f"tenant {tenant_id} has reached its limit of sessions")
            owner = user if isinstance(user, str) else None
            session = Session(tenant_id, session_id, now, now, user_id=owner)
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

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]:
        await self.purge_expired()
        found = [
            s for (tenant, _), s in self._sessions.items() if tenant == tenant_id and visible(s.user_id, user)
        ]
        found.reverse()  # most recently active first
        return found

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool:
        key = (tenant_id, session_id)
        session = self._live(key)
        if session is None or not visible(session.user_id, user):
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
