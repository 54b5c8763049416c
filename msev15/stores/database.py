"""Opening a shared SQLite file the same way everywhere: busy timeout, then WAL, safely under races."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import aiosqlite

from msev15.stores.order_rules import DatabaseBusy
from msev15.stores.sql import Dialect, SqliteSql
from msev15.tracing import span

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
_DB_SPAN = {"db.system.name": "sqlite", "db.namespace": "orders"}  # never the statement's values
T = TypeVar("T")


def open_file(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """An autocommit connection with a busy timeout, in WAL mode (runs in the connection's thread).

    Switching a file to WAL does not wait on SQLite's busy handler: when several processes (or
    app instances) open a new file at once, the switch can fail at once with "database is locked".
    It is retried here within the same busy timeout, so start-up is as patient as every query.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        deadline = time.monotonic() + busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)  # this thread only: nothing else runs on this connection yet
                pause = min(pause * 2, 0.2)
        db.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        db.close()
        raise
    return db


async def connect(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> aiosqlite.Connection:
    """An aiosqlite connection opened by `open_file`."""
    return await aiosqlite.Connection(partial(open_file, Path(path), busy_timeout_ms), 64)


class SqliteDatabase:
    """One aiosqlite connection to a SQLite file behind the `Database` seam.

    Its writes and reads are serialised (one connection) so nobody sees a half-done change, and a
    write transaction is taken before reading (`BEGIN IMMEDIATE`) so check-then-change cannot race.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self.sql = SqliteSql(db)
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> SqliteDatabase:
        db = await connect(Path(path), busy_timeout_ms)
        db.row_factory = aiosqlite.Row
        return cls(db, Path(path))

    def describe(self) -> str:
        return str(self.path)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteSql]:
        async with self.lock:
            with span("sqlite transaction", _DB_SPAN), busy_is_refusal():
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.sql
                    await self.db.commit()
                except BaseException:
                    if self.db.in_transaction:  # a failed COMMIT must not leave the transaction open
                        await self.db.rollback()
                    raise

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[SqliteSql]:
        async with self.lock:
            with span("sqlite read", _DB_SPAN), busy_is_refusal():
                yield self.sql

    async def check(self) -> str:
        async with self.reading() as db:
            await db.fetchone("SELECT 1")
        return "ok"

    async def close(self) -> None:
        async with self.lock:
            await self.db.close()


@contextlib.contextmanager
def busy_is_refusal() -> Iterator[None]:
    """A lock held elsewhere past the busy timeout is a plain refusal, not a crash of the tool."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            log.warning("order database busy: %s", exc)
            raise DatabaseBusy() from exc
        raise
