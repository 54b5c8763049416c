"""RedisSessionStore: sessions shared by every instance, so a load balancer needs no sticky sessions.

Keys (tenant and session id percent-encoded, so ':' in an id can never merge two keys; the
tenant is a hash tag, so one tenant's keys share a Redis Cluster slot and a script may touch
them together):

    {prefix}:{t=<tenant>}:s:<session>   hash: created_at, last_activity, metadata (JSON), and for
                                        an owned session user_id and user_index (its owner's index)
    {prefix}:{t=<tenant>}:m:<session>   list: one JSON record per message, oldest first
    {prefix}:{t=<tenant>}:index         sorted set: session ids by last activity (listing, no KEYS)
    {prefix}:{t=<tenant>}:u:<user>:index   the same, for one end user's sessions
    {prefix}:{t=<tenant>}:lock:<session>   the turn lock (redis-py Lock: token, timeout, renewed)
    {prefix}:tenants                    set of tenants with an index (the purge walks it)

Every write sets the TTL of what it touches, so Redis itself forgets idle sessions; the index
is pruned of expired members when read. Appends are one Lua script, so a turn is stored whole
or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import LockError, ReadOnlyError, RedisError, ResponseError

from msev15.jsonio import dumps, loads
from msev15.principal import ANY_USER, UserScope
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
from msev15.stores.sessions.redis_scripts import DELETE, GET, LIMIT, NOT_OWNER, SAVE

log = logging.getLogger(__name__)
T = TypeVar("T")

_FIELDS = ("created_at", "last_activity", "metadata", "user_id")


def _enc(part: str) -> str:
    """Percent-encode a key part: never ':', '{', '}' or '%' left bare, so parts cannot run together."""
    return quote(part, safe="")


class RedisSessionStore:
    """Sessions in Redis: TTLs for expiry, a Lua script per append, a Redis lock per turn."""

    def __init__(
        self,
        client: Redis,
        ttl_seconds: float = 86_400,
        max_per_tenant: int = 10_000,
        max_messages: int = 200,
        clock: Any = time.time,
        lock_timeout: float = 30.0,
        lock_wait: float = 125.0,
        prefix: str = "msev15",
        retry_window: float = 5.0,
    ) -> None:
        self.client = client  # shared with anything else that wants this Redis (rate limits)
        self.ttl = ttl_seconds
        self.max_per_tenant = max_per_tenant
        self.max_messages = max_messages
        self.lock_timeout = lock_timeout
        self.lock_wait = lock_wait
        self.prefix = prefix
        self.retry_window = retry_window
        self._clock = clock
        self._locks = LockTable()
        self._save = client.register_script(SAVE)
        self._delete = client.register_script(DELETE)
        self._read = client.register_script(GET)

    @classmethod
    async def open(
        cls,
        url: str,
        ttl_seconds: float = 86_400,
        max_per_tenant: int = 10_000,
        max_messages: int = 200,
        clock: Any = time.time,
        lock_timeout: float = 30.0,
        lock_wait: float = 125.0,
        prefix: str = "msev15",
        max_connections: int = 256,
        pool_wait: float = 10.0,
    ) -> RedisSessionStore:
        """Build the client; no connection yet, so the service starts (unready) while Redis is down."""
        client = connect(url, max_connections, pool_wait)
        store = cls(
            client,
            ttl_seconds,
            max_per_tenant,
            max_messages,
            clock,
            lock_timeout,
            lock_wait,
            prefix,
            pool_wait,
        )
        try:
            await store.check()
        except SessionStoreUnavailable as exc:
            log.warning("Redis is not reachable yet (%s); readiness fails until it is", exc)
        return store

    # Keys --------------------------------------------------------------------------------

    def _tenant(self, tenant_id: str) -> str:
        return f"{self.prefix}:{{t={_enc(tenant_id)}}}"

    def _user_index(self, tenant_id: str, user: UserScope) -> str:
        """The sorted set of one end user's sessions ('' for a tenant-wide scope)."""
        return f"{self._tenant(tenant_id)}:u:{_enc(user)}:index" if isinstance(user, str) else ""

    def _keys(self, tenant_id: str, session_id: str) -> list[str]:
        tenant, sid = self._tenant(tenant_id), _enc(session_id)
        return [f"{tenant}:s:{sid}", f"{tenant}:m:{sid}", f"{tenant}:index"]

    # Locking -----------------------------------------------------------------------------

    def lock(self, tenant_id: str, session_id: str) -> Any:
        return self._hold(tenant_id, session_id)

    @contextlib.asynccontextmanager
    async def _hold(self, tenant_id: str, session_id: str) -> AsyncIterator[None]:
        # Waiters of this process queue locally, so only one of them polls Redis.
        async with self._locks.hold((tenant_id, session_id)):
            lock = Lock(
                self.client,
                f"{self._tenant(tenant_id)}:lock:{_enc(session_id)}",
                timeout=self.lock_timeout,
                sleep=0.02,
                blocking_timeout=self.lock_wait,
                thread_local=False,  # one Lock object per turn: its token is its own
            )
            with _unavailable():
                acquired = await lock.acquire()
            if not acquired:
                raise SessionStoreUnavailable("another turn on this session is still running; try again")
            try:
                async with renewed(
                    self.lock_timeout / 3, lambda: _reacquire(lock), f"session {session_id!r}"
                ):
                    yield
            finally:
                await _release(lock, session_id)

    # Reads and writes --------------------------------------------------------------------

    async def get(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> Session | None:
        hash_key, list_key, _ = self._keys(tenant_id, session_id)
        cutoff = self._clock() - self.ttl
        with _unavailable():
            out = await self._read(keys=[hash_key, list_key], args=[repr(cutoff), _arg(user)])
        if not out:
            return None
        created, last, meta, owner, *records = out
        return Session(
            tenant_id,
            session_id,
            float(created),
            float(last),
            [Message.from_record(loads(r)) for r in records],
            loads(meta or "{}"),
            owner or None,
        )

    def _session(
        self, tenant_id: str, session_id: str, fields: list[Any], records: list[str]
    ) -> Session | None:
        created, last, meta, owner = fields
        if last is None or float(last) < self._clock() - self.ttl:
            return None
        return Session(
            tenant_id,
            session_id,
            float(created),
            float(last),
            [Message.from_record(loads(r)) for r in records],
            loads(meta or "{}"),
            owner,
        )

    async def save_turn(
        self,
        tenant_id: str,
        session_id: str,
        messages: list[Message],
        metadata: dict[str, Any] | None = None,
        user: UserScope = ANY_USER,
        last: bool = False,  # noqa: ARG002 - the lock is released on leaving it
    ) -> Session:
        now = self._clock()
        args: list[Any] = [
            repr(float(now)),
            repr(float(now - self.ttl)),
            max(1, int(self.ttl * 1000)),
            self.max_messages,
            self.max_per_tenant,
            session_id,
            dumps(metadata) if metadata is not None else "",
            _arg(user),
            self._user_index(tenant_id, user),
            uuid.uuid4().hex,
            *(dumps(m.to_record()) for m in messages),
        ]
        try:
            out = await self._retrying(lambda: self._save(keys=self._keys(tenant_id, session_id), args=args))
        except ResponseError as exc:
            if LIMIT in str(exc):
                raise SessionLimitError(f"tenant {tenant_id} has reached its limit of sessions") from None
            if NOT_OWNER in str(exc):
                raise SessionOwnedElsewhere(session_id) from None
            raise
        created_flag, created, last, meta, owner, *records = out
        if created_flag == "1":
            with contextlib.suppress(RedisError):  # only the purge reads it; the next new session retries
                await self.client.sadd(f"{self.prefix}:tenants", tenant_id)
        return Session(
            tenant_id,
            session_id,
            float(created),
            float(last),
            [Message.from_record(loads(r)) for r in records],
            loads(meta),
            owner or None,
        )

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retrying(call, self.retry_window)

    async def list(self, tenant_id: str, user: UserScope = ANY_USER) -> list[Session]:
        index = self._user_index(tenant_id, user) or f"{self._tenant(tenant_id)}:index"
        cutoff = self._clock() - self.ttl
        with _unavailable():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(index, "-inf", f"({cutoff!r}")
                pipe.zrevrange(index, 0, -1)
                _, ids = await pipe.execute()
            if not ids:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for sid in ids:
                    hash_key, list_key, _ = self._keys(tenant_id, sid)
                    pipe.hmget(hash_key, _FIELDS)
                    pipe.lrange(list_key, 0, -1)
                found = await pipe.execute()
            sessions: list[Session] = []
            gone: list[str] = []
            for i, sid in enumerate(ids):
                session = self._session(tenant_id, sid, found[2 * i], found[2 * i + 1])
                if session is None or not visible(session.user_id, user):  # expired, or reused since
                    gone.append(sid)
                else:
                    sessions.append(session)
            if gone:  # evicted under memory pressure or expired between the two reads
                await self.client.zrem(index, *gone)
        sessions.sort(key=lambda s: s.last_activity, reverse=True)
        return sessions

    async def delete(self, tenant_id: str, session_id: str, user: UserScope = ANY_USER) -> bool:
        with _unavailable():
            deleted = await self._delete(
                keys=self._keys(tenant_id, session_id),
                args=[repr(float(self._clock() - self.ttl)), session_id, _arg(user)],
            )
        return bool(deleted)

    async def purge_expired(self) -> int:
        """Drop index members whose sessions expired (Redis already dropped the sessions themselves)."""
        cutoff = f"({self._clock() - self.ttl!r}"
        tenants_key = f"{self.prefix}:tenants"
        removed = 0
        with _unavailable():
            async for member in self.client.sscan_iter(tenants_key, count=500):
                tenant_id = str(member)
                index = f"{self._tenant(tenant_id)}:index"
                stale = await self.client.zrangebyscore(index, "-inf", cutoff)
                if stale:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for sid in stale:
                            hash_key, list_key, _ = self._keys(tenant_id, str(sid))
                            pipe.delete(hash_key, list_key)
                        pipe.zrem(index, *stale)
                        await pipe.execute()
                    removed += len(stale)
                if not await self.client.exists(index):
                    await self.client.srem(tenants_key, tenant_id)
        return removed

    async def check(self) -> str:
        with _unavailable():
            await self.client.ping()
        return "ok"

    async def close(self) -> None:
        await self.client.aclose()


def _arg(user: UserScope) -> str:
    """A scope as a script argument: the user id, or '' for tenant-wide (ids are never empty)."""
    return user if isinstance(user, str) else ""


def connect(
    url: str,
    max_connections: int = 256,
    pool_wait: float = 10.0,
    pool_class: type[ConnectionPool] = BlockingConnectionPool,
) -> Redis:
    """A client that fails fast when Redis is down (the default retries for seconds) and reconnects
    later. Its pool is bounded and blocking: a burst waits up to `pool_wait` for a connection
    instead of being refused ("Too many connections"); each command holds one only while it runs.
    `pool_class` takes another pool with the same `timeout` argument (the benchmark's fair one)."""
    pool = pool_class.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), 2),
    )
    return Redis(connection_pool=pool)


async def retrying(call: Callable[[], Awaitable[T]], window: float) -> T:
    """Run an idempotent Redis call again and again while Redis is briefly away (a restart, a
    failover), for at most `window` seconds: a turn in flight outlives a blip. Then it raises
    SessionStoreUnavailable."""
    deadline = time.monotonic() + window
    pause = 0.05
    while True:
        try:
            with _unavailable():
                return await call()
        except SessionStoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)


_RELEASE_PAUSES = (0.05, 0.2, 0.5)


async def _release(lock: Lock, session_id: str) -> None:
    """Give the turn lock back, retrying a failed release: a lock never outlives its lease, and a
    retried release lets the next turn go at once instead of waiting for the lease to run out."""
    for pause in (*_RELEASE_PAUSES, None):
        try:
            await lock.release()
            return
        except LockError:  # expired (or renewed by nobody): nothing is held any more
            return
        except (RedisError, OSError) as exc:
            if pause is None:
                log.warning(
                    "could not release the lock on session %r (%s); it frees itself within %g s",
                    session_id,
                    exc,
                    lock.timeout,
                )
                return
            await asyncio.sleep(pause)


async def _reacquire(lock: Lock) -> bool:
    try:
        await lock.reacquire()
    except LockError:
        return False
    return True


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Connection-level Redis failures become SessionStoreUnavailable (a 503 or an `error` event)."""
    try:
        yield
    except ResponseError as exc:
        if not isinstance(exc, ReadOnlyError):  # a replica during failover is "down"; others are bugs
            raise
        raise SessionStoreUnavailable(f"Redis is unavailable: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise SessionStoreUnavailable(f"Redis is unavailable: {type(exc).__name__}: {exc}") from exc
