"""PostgreSQL behind the `Database` seam: a bounded asyncpg pool shared by orders, outbox and audit.

Imported only when DATABASE_URL is set. Every way the server can be missing (refused, cut,
restarting, the pool exhausted past the wait) becomes a refusal the tools pass on to the model;
the pool reconnects by itself on the next acquire once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import asyncpg

from msev15.stores.order_rules import DatabaseBusy, DatabaseUnavailable
from msev15.stores.sql import Dialect, Row
from msev15.tracing import span

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\?")
_DB_SPAN = {"db.system.name": "postgresql", "db.namespace": "orders"}  # never the statement's values

# Errors that mean "the server is not there right now", as opposed to a bug in a statement.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
# Errors of contention that the caller may simply retry.
_CONTENDED: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.LockNotAvailableError,
)


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$n` (no statement of the stores has a literal `?`)."""
    count = iter(range(1, 100_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(count)}", sql)


def _changed(status: str) -> int:
    """asyncpg's command status ("UPDATE 3", "INSERT 0 1") as a row count."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresSql:
    """An asyncpg connection behind the seam."""

    dialect: Dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _changed(await self.conn.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.conn.executemany(numbered(sql), list(rows))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = await self.conn.fetchrow(numbered(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.conn.fetch(numbered(sql), *params))


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """PostgreSQL's connection and contention errors as the order layer's refusals."""
    try:
        yield
    except _CONTENDED as exc:
        log.warning("database contention: %s", type(exc).__name__)
        raise DatabaseBusy() from exc
    except _UNAVAILABLE as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from exc


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query when a connection goes back to the pool: one round trip less per call.

    asyncpg's default runs `RESET ALL; UNLISTEN *; ...` on every release. The stores never change
    session state (their settings come with the connection, their advisory locks are
    transaction-scoped, they never LISTEN), and asyncpg still rolls back a transaction left open.
    """


class PostgresDatabase:
    """A bounded pool: at most `pool_size` connections; a caller waits `wait_seconds` for one."""

    dialect: Dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, label: str, wait_seconds: float) -> None:
        self.pool = pool
        self.label = label
        self.wait_seconds = wait_seconds

    @classmethod
    async def open(cls, url: str, pool_size: int, wait_seconds: float, label: str = "") -> PostgresDatabase:
        """Connections are made on demand, up to `pool_size`; row-lock waits are bounded too."""
        wait_seconds = max(wait_seconds, 0.1)  # DB_BUSY_TIMEOUT_MS=0 would refuse every call at once
        lock_ms = int(wait_seconds * 1000)
        pool = await asyncpg.create_pool(
            url,
            # No floor: asyncpg would keep redialling (and logging) a server that is down.
            min_size=0,
            max_size=pool_size,
            timeout=max(wait_seconds, 1.0),  # connecting
            command_timeout=max(wait_seconds * 4, 10.0),
            server_settings={"lock_timeout": f"{lock_ms}ms", "application_name": "msev15"},
            reset=_keep_session,
        )
        return cls(pool, label or "postgresql", wait_seconds)

    def describe(self) -> str:
        return self.label

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        with refusals():
            try:
                conn = await self.pool.acquire(timeout=self.wait_seconds)
            except TimeoutError as exc:
                log.warning("database pool exhausted: no connection within %.1f s", self.wait_seconds)
                raise DatabaseBusy() from exc
            try:
                yield conn
            finally:
                await self.pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresSql]:
        async with self._connection() as conn:
            with span("postgresql transaction", _DB_SPAN), refusals():
                async with conn.transaction():
                    yield PostgresSql(conn)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[PostgresSql]:
        async with self._connection() as conn:
            with span("postgresql read", _DB_SPAN), refusals():
                yield PostgresSql(conn)

    async def check(self) -> str:
        """Readiness: a real round trip through the pool."""
        try:
            async with self.reading() as db:
                await db.fetchone("SELECT 1")
        except DatabaseBusy:
            return "unavailable: pool exhausted"
        except DatabaseUnavailable:
            return "unavailable: cannot reach PostgreSQL"
        return "ok"

    async def close(self) -> None:
        """Close gracefully (bounded), then cut whatever is still busy."""
        try:
            await asyncio.wait_for(self.pool.close(), timeout=10.0)
        except TimeoutError:
            self.pool.terminate()
        except _UNAVAILABLE:
            self.pool.terminate()
