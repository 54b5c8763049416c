"""One sqlite3 connection owned by one thread, with group commit for the calls that allow it.

A call runs a whole function of the connection there, so a store operation of several statements
(a transaction) costs one hop off the event loop, not one per statement. Calls run one at a time,
in order. Calls made with `together` that queue up while the thread is busy run in one write
transaction: one write lock and one commit (the WAL write) for all of them, each in a savepoint of
its own, so a call that fails undoes only its own changes. Their results are handed back in one
wake-up of the event loop.

With `checkpoint_seconds`, the WAL is copied back into the database file by a thread of its own
every that many seconds (a PASSIVE checkpoint, which never blocks a writer), instead of inside
whichever commit crosses SQLite's 1,000-page mark: that commit's thread then also wrote ~4 MB and
synced the file, and every call queued behind it waited (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from msev15.stores.database import open_file

T = TypeVar("T")
MAX_TOGETHER = 64  # calls in one transaction at most: a bound on how long it holds the write lock

Outcome = tuple[bool, Any]  # (ok, result or exception)


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    together: bool


class SqliteThread:
    def __init__(self, db: sqlite3.Connection, name: str, checkpointer: _Checkpointer | None = None) -> None:
        self._db = db
        self._checkpointer = checkpointer
        self._loop = asyncio.get_running_loop()
        self._calls: deque[_Call | None] = deque()  # None: stop
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @classmethod
    async def open(
        cls, path: Path, busy_timeout_ms: int, checkpoint_seconds: float | None = None
    ) -> SqliteThread:
        db = await asyncio.to_thread(open_file, Path(path), busy_timeout_ms)  # usable from any thread
        checkpointer = None
        if checkpoint_seconds is not None:
            db.execute("PRAGMA wal_autocheckpoint = 0")
            checkpointer = _Checkpointer(Path(path), busy_timeout_ms, checkpoint_seconds)
        return cls(db, f"sqlite-{Path(path).name}", checkpointer)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)` in the connection's thread, on its own (it may manage transactions)."""
        return await self._submit(fn, args, together=False)

    async def together(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(connection, *args)`, in one transaction with the calls queued beside it (see above;
        alone, as `run`); `fn` must not commit or roll back a transaction it did not begin."""
        return await self._submit(fn, args, together=True)

    async def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], together: bool) -> T:
        if self._closed:
            raise sqlite3.ProgrammingError("the database connection is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        with self._wake:
            self._calls.append(_Call(fn, args, future, together))
            self._wake.notify()
        return await future

    async def close(self) -> None:
        """Finish the queued calls, close the connection and end the thread; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        with self._wake:
            self._calls.append(None)
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)

    # the thread

    def _serve(self) -> None:
        try:
            while True:
                batch = self._next()
                if not batch:
                    return
                outcomes = self._together(batch) if len(batch) > 1 else [_outcome(self._db, batch[0])]
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    self._loop.call_soon_threadsafe(_deliver, batch, outcomes)
        finally:
            self._db.close()

    def _next(self) -> list[_Call]:
        """The next call, and the `together` calls queued right behind a `together` one."""
        with self._wake:
            while not self._calls:
                self._wake.wait()
            first = self._calls.popleft()
            if first is None:
                return []
            batch = [first]
            while (
                first.together
                and self._calls
                and (following := self._calls[0]) is not None
                and following.together
                and len(batch) < MAX_TOGETHER
            ):
                batch.append(following)
                self._calls.popleft()
            return batch

    def _together(self, batch: list[_Call]) -> list[Outcome]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no deadlock upgrading a read
        except sqlite3.Error as exc:
            return [(False, exc)] * len(batch)
        outcomes: list[Outcome] = []
        for call in batch:
            db.execute("SAVEPOINT call")
            outcome = _outcome(db, call)
            if not db.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O error)
                failure = outcome[1] if not outcome[0] else sqlite3.OperationalError("transaction lost")
                return [(False, failure)] * len(batch)
            if not outcome[0]:
                db.execute("ROLLBACK TO call")  # its own changes only
            db.execute("RELEASE call")
            outcomes.append(outcome)
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        return outcomes


class _Checkpointer:
    """PASSIVE checkpoints every `every` seconds, on a connection and thread of their own."""

    def __init__(self, path: Path, busy_timeout_ms: int, every: float) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._every = every
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"sqlite-checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        db = open_file(self._path, self._busy_timeout_ms)
        try:
            while not self._stopping.wait(self._every):
                with contextlib.suppress(sqlite3.Error):  # the next one catches up
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            db.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


def _outcome(db: sqlite3.Connection, call: _Call) -> Outcome:
    try:
        return True, call.fn(db, *call.args)
    except Exception as exc:  # handed to the caller, as an executor would
        return False, exc


def _deliver(batch: list[_Call], outcomes: list[Outcome]) -> None:
    for call, (ok, value) in zip(batch, outcomes, strict=True):
        if call.future.done():  # the caller went away
            continue
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)
