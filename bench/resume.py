"""Resume figures: how fast a dropped client gets its answer back, and what the turn buffer costs.

- `resume_latency`: `GET /api/v1/sessions/{id}/stream` with `Last-Event-ID: <turn_id>:<seq>`, on a
  fresh connection, from connect to the first replayed event; on finished turns (one resume at a
  time) and on running ones (the client reads a few events, drops the connection and resumes from
  an earlier position, so the first event it gets is a replayed one, not the next live token).
- `probe_buffer` (run in a subprocess, so the figure is the buffer alone): RSS growth of a
  `MemoryTurnBuffer` holding many turns, mid-answer and finished, made of a real turn's events.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import loadgen
from bench.common import rss_mib

REPLAY_FROM = 2  # resume after event 2: event 3 is the first one replayed


@dataclass
class ResumeFigures:
    finished_ms: list[float] = field(default_factory=list)
    running_ms: list[float] = field(default_factory=list)
    failures: int = 0  # a resume that answered nothing, or not the event after its position

    def ms(self, which: str, q: float) -> float:
        values = self.finished_ms if which == "finished" else self.running_ms
        return loadgen.percentile(values, q)


def chat_request(port: int, session_id: str, message: str = "Tell me about shipping") -> bytes:
    body = orjson.dumps({"session_id": session_id, "message": message})
    return loadgen.http_request("POST", "/api/v1/chat/stream", port, body, close=True)


def resume_request(port: int, session_id: str, position: str) -> bytes:
    path = f"/api/v1/sessions/{session_id}/stream"
    return loadgen.http_request("GET", path, port, close=True, headers={"Last-Event-ID": position})


def _turn_of(events: list[tuple[str, bytes]]) -> str | None:
    return events[0][0].rpartition(":")[0] if events and events[0][0] else None


async def _resume_once(port: int, session_id: str, turn_id: str, into: list[float]) -> bool:
    request = resume_request(port, session_id, f"{turn_id}:{REPLAY_FROM}")
    async with asyncio.timeout(30):
        events, first = await loadgen.sse_events(port, request, count=1)
    if first is None or not events or events[0][0] != f"{turn_id}:{REPLAY_FROM + 1}":
        return False
    into.append(first * 1000)
    return True


async def resume_latency(port: int, finished: int, running: int, concurrency: int) -> ResumeFigures:
    """`finished` resumes of ended turns one at a time; `running` cut-and-resume cycles on live ones,
    `concurrency` at once (each answer streams for about a second on the 50 ms model)."""
    out = ResumeFigures()
    tag = f"resume-{random.randrange(1 << 30)}"  # noqa: S311 - not crypto

    # Ended turns: stream them whole first (a few at a time), then resume each once.
    ended: list[tuple[str, str]] = []
    gate = asyncio.Semaphore(max(1, concurrency))

    async def whole(i: int) -> None:
        session = f"{tag}-f{i}"
        async with gate, asyncio.timeout(60):
            events, _ = await loadgen.sse_events(port, chat_request(port, session))
        turn = _turn_of(events)
        if turn is not None and len(events) > REPLAY_FROM + 1:
            ended.append((session, turn))
        else:
            out.failures += 1

    await asyncio.gather(*(whole(i) for i in range(finished)))
    for session, turn in ended:
        if not await _resume_once(port, session, turn, out.finished_ms):
            out.failures += 1

    # Running turns: read past the position, drop the connection, resume at once.
    async def cut_and_resume(i: int) -> None:
        session = f"{tag}-r{i}"
        async with gate:
            async with asyncio.timeout(30):
                events, _ = await loadgen.sse_events(port, chat_request(port, session), REPLAY_FROM + 2)
            turn = _turn_of(events)
            if turn is None or len(events) < REPLAY_FROM + 2:
                out.failures += 1
                return
            if not await _resume_once(port, session, turn, out.running_ms):
                out.failures += 1

    await asyncio.gather(*(cut_and_resume(i) for i in range(running)))
    return out


async def one_turn_events(port: int) -> list[bytes]:
    """The `data` of every event of one real streamed turn (the probe's material)."""
    async with asyncio.timeout(60):
        events, _ = await loadgen.sse_events(port, chat_request(port, f"probe-{random.randrange(1 << 30)}"))  # noqa: S311
    return [data for _, data in events]


# The buffer's memory (a subprocess) ------------------------------------------------------------


def probe_buffer(turns: int, events_file: Path) -> dict[str, float]:
    """RSS growth of a MemoryTurnBuffer with `turns` turns: first each mid-answer (half its events,
    not finished), then each finished and kept (every event), as the service keeps it."""
    from msev15.stores.turns import MemoryTurnBuffer, TurnInfo

    template: list[bytes] = [bytes(x, "utf-8") for x in orjson.loads(events_file.read_bytes())]
    model_turn = orjson.loads(template[0]).get("turn_id", "")
    half = max(1, len(template) // 2)

    def rss() -> float:
        gc.collect()
        return rss_mib(os.getpid())

    async def fill() -> dict[str, float]:
        buffer = MemoryTurnBuffer(keep_seconds=300, max_kept_bytes=1 << 40)  # the cost per turn, uncapped
        ids = [f"{i:016x}" for i in range(turns)]  # 16 characters, as the service's turn ids
        before = rss()
        started = time.perf_counter()
        for i, turn_id in enumerate(ids):
            await buffer.open(TurnInfo(turn_id, "default", f"web-{i:08d}", None, time.time()))
            for seq, data in enumerate(template[:half], 1):
                # a distinct bytes object per event, of the real size, as the service writes them
                buffer.add(turn_id, seq, data.replace(model_turn.encode(), turn_id.encode()))
        active = rss()
        for turn_id in ids:
            for seq, data in enumerate(template[half:], half + 1):
                buffer.add(turn_id, seq, data.replace(model_turn.encode(), turn_id.encode()))
            await buffer.finish(turn_id)
        kept = rss()
        assert len(buffer) == turns
        return {
            "before_mib": before,
            "active_mib": active,
            "kept_mib": kept,
            "seconds": time.perf_counter() - started,
            "events": len(template),
            "active_events": half,
            "event_bytes": sum(len(x) for x in template),
        }

    return asyncio.run(fill())
