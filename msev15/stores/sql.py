"""One SQL seam over SQLite (aiosqlite) and PostgreSQL (asyncpg): each statement is written once.

Statements use `?` placeholders; on PostgreSQL (stores/postgres.py, imported only when
DATABASE_URL is set) they become `$1, $2, ...`. What only one engine needs (row locks, its
migrations) asks `dialect`. bench/README.md explains why the drivers are used directly rather
than through SQLAlchemy: SQLAlchemy made the SQLite path three times slower.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import aiosqlite

Dialect = Literal["sqlite", "postgresql"]


class Row(Protocol):
    """A result row: by column name or position (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: str | int, /) -> Any: ...
    def keys(self) -> Iterable[str]: ...


class Sql(Protocol):
    """One connection inside a transaction or a read."""

    @property
    def dialect(self) -> Dialect: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


async def fetchval(db: Sql, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = await db.fetchone(sql, params)
    return None if row is None else row[0]


def row_dict(row: Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}


class SqliteSql:
    """An aiosqlite connection behind the seam: the same calls the stores made before it existed."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self.db.execute(sql, params)
        return cursor.rowcount  # not closed: that would cost one more hop to the connection's thread

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.db.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self.db.execute(sql, params) as cursor:
            row: Row | None = await cursor.fetchone()
        return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())


class Database(Protocol):
    """Where orders, the outbox and the audit log live: a SQLite file or a PostgreSQL pool."""

    @property
    def dialect(self) -> Dialect: ...
    def transaction(self) -> AbstractAsyncContextManager[Sql]:
        """One write transaction, all or nothing."""
        ...

    def reading(self) -> AbstractAsyncContextManager[Sql]:
        """Statements that each stand alone (reads, appends)."""
        ...

    async def check(self) -> str: ...
    async def close(self) -> None: ...
    def describe(self) -> str:
        """Where the data lives, fit for logs (no password)."""
        ...
