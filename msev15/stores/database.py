"""Opening a shared SQLite file the same way everywhere: busy timeout, then WAL, safely under races."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiosqlite

BUSY_TIMEOUT_MS = 5000


async def connect(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> aiosqlite.Connection:
    """An autocommit connection with a busy timeout, in WAL mode.

    Switching a file to WAL does not wait on SQLite's busy handler: when several processes (or
    app instances) open a new file at once, the switch can fail at once with "database is locked".
    It is retried here within the same busy timeout, so start-up is as patient as every query.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        deadline = time.monotonic() + busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                await db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)
        await db.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        await db.close()
        raise
    return db
