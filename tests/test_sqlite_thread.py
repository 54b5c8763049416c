"""The SQLite connection thread's group commit: calls queued together share one transaction, each
in its own savepoint, and come back in order with their own results or errors."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from msev15.stores.sqlite_thread import SqliteThread
from tests.helpers import eventually


class Refused(Exception):
    pass


def insert(db: sqlite3.Connection, n: int, fail: bool = False) -> bool:
    db.execute("INSERT INTO t (n) VALUES (?)", (n,))
    if fail:
        raise Refused(n)
    return db.in_transaction


async def test_calls_queued_together_share_one_transaction_and_fail_alone(tmp_path: Path) -> None:
    thread = await SqliteThread.open(tmp_path / "t.db", 1000)
    await thread.run(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
    busy, release = threading.Event(), threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        busy.set()
        release.wait(5)

    blocker = asyncio.ensure_future(thread.run(hold))
    await asyncio.to_thread(busy.wait, 5)  # the thread is busy: what follows queues up
    calls = [
        asyncio.ensure_future(thread.together(insert, 1)),
        asyncio.ensure_future(thread.together(insert, 2, True)),
        asyncio.ensure_future(thread.together(insert, 3)),
    ]
    await asyncio.sleep(0)  # let the three reach the queue
    release.set()
    await blocker
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is True and results[2] is True  # inside the group's transaction
    assert isinstance(results[1], Refused)
    rows = await thread.run(lambda db: [n for (n,) in db.execute("SELECT n FROM t ORDER BY n")])
    assert rows == [1, 3]  # the refused call's insert was undone, and only it
    assert await thread.together(insert, 4) is False  # alone: as a plain call (autocommit)
    assert await thread.run(insert, 5) is False  # a plain call: autocommit
    await thread.close()
    await thread.close()  # twice is harmless
    with pytest.raises(sqlite3.ProgrammingError):
        await thread.run(lambda db: None)


async def test_a_group_that_cannot_take_the_write_lock_fails_every_call_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    thread = await SqliteThread.open(path, 50)  # a 50 ms busy timeout
    await thread.run(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker holds the write lock
    busy, release = threading.Event(), threading.Event()
    blocker = asyncio.ensure_future(thread.run(lambda db: (busy.set(), release.wait(5))))
    await asyncio.to_thread(busy.wait, 5)
    calls = [asyncio.ensure_future(thread.together(insert, n)) for n in (1, 2)]
    await asyncio.sleep(0)
    release.set()
    await blocker
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) and "locked" in str(r) for r in results), results
    other.execute("ROLLBACK")
    other.close()
    assert await thread.run(lambda db: db.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 0
    await thread.close()


async def test_the_wal_goes_back_into_the_file_off_the_calls_path(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    thread = await SqliteThread.open(path, 1000, checkpoint_seconds=0.05)
    assert await thread.run(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    await thread.run(lambda db: db.execute("CREATE TABLE t (n INTEGER, pad BLOB)"))
    before = path.stat().st_size
    for n in range(50):
        await thread.together(lambda db, n=n: db.execute("INSERT INTO t VALUES (?, zeroblob(4000))", (n,)))
    # no commit checkpointed (autocheckpoint is off): the file grows only by the checkpointer's hand
    await eventually(lambda: path.stat().st_size > before + 150_000, what="a checkpoint by the checkpointer")
    await thread.close()
