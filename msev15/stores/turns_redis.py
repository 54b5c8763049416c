"""RedisTurnBuffer: a turn's events in a Redis Stream, so any instance can serve a resume.

Keys (the turn id is URL-safe, so it needs no encoding):

    {prefix}:turn:<turn_id>          stream: entry id <seq>-0, field `d` = the event's JSON; a last
                                     entry with field `end` marks the turn's end
    {prefix}:turn:<turn_id>:info     hash: tenant_id, session_id, user_id, started_at
    {prefix}:latest:<tenant>:<session>   the session's newest turn id (tenant and session encoded)

The writer adds with XADD (capped with MAXLEN) and never waits: a turn's events go out from a
sender task of its own, all that queued up during the last round trip in the next one. Readers
replay with XRANGE and follow with XREAD BLOCK on their own connections, so a waiting reader
never takes a connection a turn needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from msev15.stores.sessions.redis import retrying
from msev15.stores.turns import KEEPALIVE, TurnGone, TurnInfo

_LIVE_TTL_MS = 3_600_000  # a running turn's keys outlive any turn timeout; finish() shortens it

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Outgoing:
    """A turn's events on their way to Redis."""

    events: list[tuple[int, bytes]] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None
    failed: bool = False  # Redis stayed away past the retry window: the rest is dropped


class RedisTurnBuffer:
    def __init__(
        self,
        writer: Redis,
        reader: Redis,
        keep_seconds: float = 300.0,
        max_events: int = 20_000,
        prefix: str = "msev15",
        retry_window: float = 5.0,
    ) -> None:
        self.retry_window = retry_window  # how long a write or read rides out a Redis blip
        self._writer = writer  # the session store's client (short commands only)
        self._reader = reader  # blocking reads: a connection each while it waits
        self.keep_seconds = keep_seconds
        self.max_events = max_events
        self.prefix = prefix
        self._outgoing: dict[str, _Outgoing] = {}

    def _stream(self, turn_id: str) -> str:
        return f"{self.prefix}:turn:{turn_id}"

    def _latest(self, tenant_id: str, session_id: str) -> str:
        return f"{self.prefix}:latest:{quote(tenant_id, safe='')}:{quote(session_id, safe='')}"

    async def open(self, info: TurnInfo) -> None:
        meta = self._stream(info.turn_id) + ":info"
        fields: dict[str | bytes, str | bytes] = {
            "tenant_id": info.tenant_id,
            "session_id": info.session_id,
            "started_at": repr(info.started_at),
        }
        if info.user_id is not None:
            fields["user_id"] = info.user_id

        async def write() -> None:  # the same fields again: a repeat changes nothing
            async with self._writer.pipeline(transaction=True) as pipe:
                pipe.hset(meta, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(meta, _LIVE_TTL_MS)
                pipe.set(self._latest(info.tenant_id, info.session_id), info.turn_id, px=_LIVE_TTL_MS)
                await pipe.execute()

        await retrying(write, self.retry_window)

    def add(self, turn_id: str, seq: int, data: bytes) -> None:
        out = self._outgoing.get(turn_id)
        if out is None:
            out = self._outgoing[turn_id] = _Outgoing()
        if out.failed:
            return
        out.events.append((seq, data))
        if out.sender is None:
            out.sender = asyncio.create_task(self._send(turn_id, out), name="turn-buffer-send")

    async def _send(self, turn_id: str, out: _Outgoing) -> None:
        try:
            while out.events:
                batch, out.events = out.events, []
                await self.extend(turn_id, batch)
        except Exception:  # its readers then miss the rest and stop at the end marker or their idle bound
            out.failed, out.events = True, []
            log.exception("turn %s could not be buffered", turn_id)
        finally:
            out.sender = None

    async def extend(self, turn_id: str, events: list[tuple[int, bytes]]) -> None:
        """One pipelined round trip, retried through a blip: each entry id is its seq, so a repeat of
        one that already landed is refused by Redis (an id not above the last) and changes nothing."""
        stream = self._stream(turn_id)

        async def add() -> None:
            async with self._writer.pipeline(transaction=False) as pipe:
                for seq, data in events:
                    pipe.xadd(stream, {"d": data}, id=f"{seq}-0", maxlen=self.max_events, approximate=True)
                for result in await pipe.execute(raise_on_error=False):
                    landed = isinstance(result, ResponseError) and "equal or smaller" in str(result)
                    if isinstance(result, Exception) and not landed:
                        raise result

        await retrying(add, self.retry_window)

    async def finish(self, turn_id: str) -> None:
        out = self._outgoing.pop(turn_id, None)
        if out is not None and out.sender is not None:
            await asyncio.shield(out.sender)  # what was added goes first; a cancelled finish leaves it going
        stream = self._stream(turn_id)
        keep = max(1, int(self.keep_seconds * 1000))

        async def end() -> None:  # a repeated end marker is harmless: readers stop at the first
            async with self._writer.pipeline(transaction=True) as pipe:
                pipe.xadd(stream, {"end": "1"})
                pipe.pexpire(stream, keep)
                pipe.pexpire(stream + ":info", keep)
                await pipe.execute()

        await retrying(end, self.retry_window)

    async def read(
        self, turn_id: str, after: int = 0, idle: float | None = None
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        stream = self._stream(turn_id)

        async def head() -> list[Any]:
            async with self._writer.pipeline(transaction=False) as pipe:
                pipe.exists(stream + ":info")
                pipe.xrange(stream, count=1)
                return await pipe.execute()

        known, first = await retrying(head, self.retry_window)
        if not known:
            raise TurnGone(turn_id)  # unknown or expired
        if first and not _is_end(first[0][1]) and _seq(first[0][0]) > after + 1:
            raise TurnGone(turn_id)  # its early events were dropped: read the history instead
        return self._follow(stream, after, idle)

    async def _follow(
        self, stream: str, after: int, idle: float | None
    ) -> AsyncIterator[tuple[int, bytes] | None]:
        position = f"{after}-0"
        block = int((idle or 60.0) * 1000)
        while True:
            found: Any = await retrying(
                partial(self._reader.xread, {stream: position}, block=block, count=500), self.retry_window
            )
            if not found:
                if idle is not None:
                    yield KEEPALIVE
                continue
            entries: list[Any] = found[0][1] if isinstance(found, list) else next(iter(found.values()))[0]
            for entry_id, fields in entries:
                if _is_end(fields):
                    return
                position = entry_id if isinstance(entry_id, str) else entry_id.decode()
                yield _seq(entry_id), _bytes(fields.get("d", fields.get(b"d", b"")))

    async def info(self, turn_id: str) -> TurnInfo | None:
        raw = await retrying(
            partial(self._writer.hgetall, self._stream(turn_id) + ":info"), self.retry_window
        )
        if not raw:
            return None
        got = {_text(k): _text(v) for k, v in raw.items()}
        started = float(got["started_at"])
        return TurnInfo(turn_id, got["tenant_id"], got["session_id"], got.get("user_id"), started)

    async def latest(self, tenant_id: str, session_id: str) -> TurnInfo | None:
        turn_id = await retrying(
            partial(self._writer.get, self._latest(tenant_id, session_id)), self.retry_window
        )
        return await self.info(_text(turn_id)) if turn_id else None

    async def purge(self) -> int:
        return 0  # Redis expires the keys itself

    async def close(self) -> None:
        try:
            await self._reader.aclose()
        except RedisError:
            pass


def _seq(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


def _is_end(fields: Any) -> bool:
    return "end" in fields or b"end" in fields


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def reader_client(url: str) -> Redis:
    """The client of blocking reads: many connections, each held only by a waiting reader."""
    client: Redis = Redis.from_url(
        url, decode_responses=True, max_connections=10_000, socket_connect_timeout=2.0, socket_timeout=None
    )
    return client
