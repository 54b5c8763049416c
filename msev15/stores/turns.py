"""The turn buffer: every event of a turn, kept a while after it ends, so clients can resume.

A turn writes its events once, in order, numbered 1, 2, 3... (`seq`); any number of readers
replay from a position and then follow live. The writer never waits for a reader. Each turn is
capped in events and bytes (the oldest are dropped first; a resume before them is refused) and
forgotten `keep_seconds` after it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

KEEPALIVE = None  # what `read` yields while a live turn has been quiet for `idle` seconds
_TICK: Any = object()  # a waiting reader's wake-up that is a keep-alive, not an event


class TurnGone(Exception):
    """The turn is unknown, expired, or its early events were dropped: read the history instead."""


@dataclass(frozen=True, slots=True)
class TurnInfo:
    turn_id: str
    tenant_id: str
    session_id: str
    user_id: str | None  # the session's owner, for the same ownership rules as history
    started_at: float


class TurnBuffer(Protocol):
    """Where a turn's numbered events live while clients may still resume it.

    Args (shared): `turn_id` names one turn; `seq` is the 1-based number of an event in it and
    `data` its wire form (JSON bytes), stored and replayed as they are.
    """

    async def open(self, info: TurnInfo) -> None: ...

    def add(self, turn_id: str, seq: int, data: bytes) -> None:
        """Add the next event. Never waits, for readers or for a remote server: a remote buffer sends
        in the background, in order, what queued up together in one round trip."""
        ...

    async def finish(self, turn_id: str) -> None:
        """The turn ended (once what was added is stored): readers drain what is left and stop; the
        buffer expires later."""
        ...

    async def read(
        self, turn_id: str, after: int = 0, idle: float | None = None
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        """The events after `after`, then the live ones until the turn ends (KEEPALIVE while quiet).

        Raises TurnGone at once when those events are no longer here.
        """
        ...

    async def info(self, turn_id: str) -> TurnInfo | None: ...

    async def latest(self, tenant_id: str, session_id: str) -> TurnInfo | None:
        """The session's running turn, or the last one while its buffer is kept."""
        ...

    async def purge(self) -> int: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Turn:
    info: TurnInfo
    entries: list[bytes] = field(default_factory=list)  # entry k holds seq dropped + k + 1
    dropped: int = 0  # events dropped from the front to respect the caps
    size: int = 0
    ended_at: float | None = None
    waiters: list[asyncio.Future[Any]] | None = field(default_factory=list)  # None once ended
    packed: bytes = b""  # an ended turn's events, joined: far less memory than a list of them
    ends: array[int] = field(default_factory=lambda: array("I"))  # where each packed event ends

    def __len__(self) -> int:
        return len(self.ends) if self.waiters is None else len(self.entries)

    def entry(self, index: int) -> bytes:
        if self.waiters is not None:
            return self.entries[index]
        return self.packed[self.ends[index - 1] if index else 0 : self.ends[index]]

    def end(self, at: float) -> None:
        """Mark it ended, wake its readers, and pack its events."""
        self.ended_at = at
        self.ends = array("I", itertools.accumulate(len(e) for e in self.entries))
        self.packed, self.entries = b"".join(self.entries), []
        self.wake()
        self.waiters = None

    def wake(self) -> None:
        """Wake the readers waiting for what comes next."""
        waiters = self.waiters
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            waiters.clear()


class MemoryTurnBuffer:
    """In-process buffer: the resume point of the memory and SQLite session stores.

    An ended turn is kept packed, and the ended turns together hold at most `max_kept_bytes` of
    events: the oldest go first, so a busy worker's memory has a bound besides time.
    """

    def __init__(
        self,
        keep_seconds: float = 300.0,
        max_events: int = 20_000,
        max_bytes: int = 2 * 1024 * 1024,
        clock: Any = time.monotonic,
        max_kept_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.keep_seconds = keep_seconds
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_kept_bytes = max_kept_bytes
        self._clock = clock
        self._turns: dict[str, _Turn] = {}
        self._latest: dict[tuple[str, str], str] = {}
        self._ended: OrderedDict[str, _Turn] = OrderedDict()  # in the order they ended
        self._kept_bytes = 0

    async def open(self, info: TurnInfo) -> None:
        self._turns[info.turn_id] = _Turn(info)
        self._latest[(info.tenant_id, info.session_id)] = info.turn_id

    def add(self, turn_id: str, seq: int, data: bytes) -> None:
        turn = self._turns.get(turn_id)
        if turn is None or turn.waiters is None:
            return
        turn.entries.append(data)
        turn.size += len(data)
        while len(turn.entries) > 1 and (len(turn.entries) > self.max_events or turn.size > self.max_bytes):
            gone = turn.entries.pop(0)
            turn.size -= len(gone)
            turn.dropped += 1
        turn.wake()

    async def finish(self, turn_id: str) -> None:
        turn = self._turns.get(turn_id)
        if turn is None or turn.waiters is None:
            return
        turn.end(self._clock())
        self._ended[turn_id] = turn
        self._kept_bytes += turn.size
        self._expire()

    def _expire(self) -> None:
        """Forget ended turns, oldest first, while they are past `keep_seconds` or over the cap."""
        now = self._clock()
        while self._ended:  # O(1) when nothing is due: only the oldest is looked at
            turn = next(iter(self._ended.values()))
            assert turn.ended_at is not None
            if now - turn.ended_at <= self.keep_seconds and self._kept_bytes <= self.max_kept_bytes:
                return
            self._forget(turn)

    async def read(
        self, turn_id: str, after: int = 0, idle: float | None = None
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        turn = self._live(turn_id)
        if turn is None or after < turn.dropped:
            raise TurnGone(turn_id)
        return self._follow(turn, after, idle)

    async def _follow(
        self, turn: _Turn, after: int, idle: float | None
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        position = after  # events are numbered from 1 without gaps: entry k holds dropped + k + 1
        loop = asyncio.get_running_loop()
        quiet = _Quiet(loop, idle) if idle is not None else None
        try:
            while True:
                index = position - turn.dropped  # again after every yield: the cap may have dropped some
                if index < 0:  # the reader fell behind the cap while it was away
                    raise TurnGone(turn.info.turn_id)
                if index < len(turn):
                    position += 1
                    yield position, turn.entry(index)
                    continue
                if turn.waiters is None:  # ended, and all of it read
                    return
                waiter: asyncio.Future[Any] = loop.create_future()
                turn.waiters.append(waiter)
                if quiet is not None:
                    quiet.watch(waiter)
                if await waiter is _TICK:
                    yield KEEPALIVE
        finally:
            if quiet is not None:
                quiet.close()

    def _live(self, turn_id: str) -> _Turn | None:
        self._expire()
        return self._turns.get(turn_id)

    async def info(self, turn_id: str) -> TurnInfo | None:
        turn = self._live(turn_id)
        return turn.info if turn is not None else None

    async def latest(self, tenant_id: str, session_id: str) -> TurnInfo | None:
        turn_id = self._latest.get((tenant_id, session_id))
        return await self.info(turn_id) if turn_id is not None else None

    async def purge(self) -> int:
        before = len(self._turns)
        self._expire()
        return before - len(self._turns)

    def _forget(self, turn: _Turn) -> None:
        turn_id = turn.info.turn_id
        self._turns.pop(turn_id, None)
        if self._ended.pop(turn_id, None) is not None:
            self._kept_bytes -= turn.size
        key = (turn.info.tenant_id, turn.info.session_id)
        if self._latest.get(key) == turn_id:
            del self._latest[key]

    async def close(self) -> None:
        for turn in self._turns.values():
            if turn.waiters is not None:
                turn.end(self._clock())
        self._turns.clear()
        self._latest.clear()
        self._ended.clear()
        self._kept_bytes = 0

    def __len__(self) -> int:
        return len(self._turns)


class _Quiet:
    """Wakes a waiting reader with a keep-alive once it has waited `idle` seconds.

    The timer is re-armed lazily, when it fires, instead of once per wait: a reader of a busy turn
    costs one timer per `idle` seconds, not one per event.
    """

    __slots__ = ("_loop", "_idle", "_waiter", "_since", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle: float) -> None:
        self._loop = loop
        self._idle = idle
        self._waiter: asyncio.Future[Any] | None = None
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, waiter: asyncio.Future[Any]) -> None:
        self._waiter, self._since = waiter, self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._idle, self._check)

    def _check(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms it again
        due = self._since + self._idle
        if self._loop.time() >= due:
            waiter.set_result(_TICK)
        else:
            self._timer = self._loop.call_at(due, self._check)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
