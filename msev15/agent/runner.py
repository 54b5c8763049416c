"""Turns that outlive their connection: each runs in its own task and writes to the turn buffer.

A transport starts a turn, then reads its numbered events from the buffer like any resuming
client; closing the connection stops the reading, never the turn. Only a stop (the customer's
stop button or frame) cancels it; the turn then ends with `done` marked interrupted. The turn's
own task numbers each event and adds it to the buffer, which never makes it wait: text that
arrived in one network read is already one event (the model readers join it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

import orjson

from msev15.agent.events import DoneEvent, ErrorEvent, Event, TokenEvent, Turn, event_dict
from msev15.agent.loop import Agent
from msev15.agent.turn_state import TurnRefused
from msev15.principal import UserScope
from msev15.stores.sessions.base import visible
from msev15.stores.turns import TurnBuffer, TurnInfo

log = logging.getLogger(__name__)


def new_turn_id() -> str:
    return secrets.token_urlsafe(12)  # 16 characters of [A-Za-z0-9_-]


@dataclass(slots=True)
class _Running:
    turn: Turn
    turn_id: str
    task: asyncio.Task[None] | None = None
    seq: int = 0
    stopping: bool = False
    text: list[str] = field(default_factory=list)


class TurnRunner:
    """Starts turns, keeps the running ones findable by session, stops and drains them."""

    def __init__(self, agent: Agent, buffer: TurnBuffer) -> None:
        self.agent = agent
        self.buffer = buffer
        self._running: dict[str, _Running] = {}
        self._by_session: dict[tuple[str, str], str] = {}

    async def start(self, turn: Turn) -> str:
        """Start `turn`; return its id once it is under way, or raise its TurnRefused."""
        run = _Running(turn, new_turn_id())
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run.task = asyncio.create_task(self._run(run, ready), name="turn")
        try:
            await asyncio.shield(ready)
        except BaseException:
            began = ready.done() and not ready.cancelled() and ready.exception() is None
            if not began:  # refused before it began, or the caller left while it waited
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run.task
            raise
        return run.turn_id

    async def _open(self, run: _Running) -> None:
        """The buffer opens while the agent holds the session and before it does anything: a turn
        with nowhere to put its events is refused, and so changes nothing."""
        turn = run.turn
        owner = turn.principal.user_id if turn.principal is not None else None
        try:
            await self.buffer.open(TurnInfo(run.turn_id, turn.tenant_id, turn.session_id, owner, time.time()))
        except Exception as exc:
            log.warning("turn %s refused: its buffer could not be opened: %s", run.turn_id, exc)
            raise TurnRefused(
                "unavailable", "the turn buffer is unavailable; try again", retry_after=1
            ) from None
        self._running[run.turn_id] = run
        self._by_session[(turn.tenant_id, turn.session_id)] = run.turn_id

    async def _run(self, run: _Running, ready: asyncio.Future[None]) -> None:
        async def opened() -> None:
            await self._open(run)
            ready.set_result(None)

        try:
            async for event in self.agent.run(run.turn, opened):
                self._add(run, event)
        except TurnRefused as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            self._add(run, ErrorEvent(exc.message, exc.code))
        except asyncio.CancelledError:
            if not ready.done():
                raise
            self._add(run, await self._interrupted(run))
        except Exception as exc:  # the agent turns its own failures into events; this is a last resort
            log.exception("turn %s failed", run.turn_id)
            if not ready.done():  # the caller answers 500 instead of waiting for ever
                ready.set_exception(exc)
                return
            self._add(run, ErrorEvent("internal error", "internal_error"))
        finally:
            if not ready.done():
                ready.set_exception(RuntimeError("the turn ended before it began"))
            elif ready.exception() is None:
                await self._end(run)

    def _add(self, run: _Running, event: Event) -> None:
        """Number the event and add its wire form to the buffer (which never waits)."""
        turn = run.turn
        if isinstance(event, TokenEvent):
            run.text.append(event.content)
        run.seq += 1
        body = event_dict(event, turn.tenant_id, turn.session_id)
        body["turn_id"], body["seq"] = run.turn_id, run.seq
        self.buffer.add(run.turn_id, run.seq, orjson.dumps(body))

    async def _end(self, run: _Running) -> None:
        turn = run.turn
        try:
            await self.buffer.finish(run.turn_id)
        except Exception:  # its readers then stop at their idle bound, not at the end marker
            log.exception("turn %s could not be marked finished", run.turn_id)
        finally:
            self._running.pop(run.turn_id, None)
            key = (turn.tenant_id, turn.session_id)
            if self._by_session.get(key) == run.turn_id:
                del self._by_session[key]

    async def _interrupted(self, run: _Running) -> DoneEvent:
        """The end of a stopped turn: its partial text (already stored, marked interrupted)."""
        turn = run.turn
        try:
            session = await self.agent.sessions.get(turn.tenant_id, turn.session_id)
            count = sum(1 for m in session.messages if m.role in ("user", "assistant")) if session else 0
        except Exception:
            count = 0
        return DoneEvent("".join(run.text), count, turn.request_id, interrupted=True)

    def running(self, tenant_id: str, session_id: str) -> str | None:
        return self._by_session.get((tenant_id, session_id))

    def stop(
        self, tenant_id: str, session_id: str, scope: UserScope, turn_id: str | None = None
    ) -> str | None:
        """Cancel the session's running turn (the one named, if given); its id, or None when none ran."""
        found = self._running.get(turn_id or self._by_session.get((tenant_id, session_id), ""))
        if found is None or (found.turn.tenant_id, found.turn.session_id) != (tenant_id, session_id):
            return None
        owner = found.turn.principal.user_id if found.turn.principal is not None else None
        if not visible(owner, scope) or found.task is None or found.task.done():
            return None
        if not found.stopping:  # once: a second stop must not cut short the stopped turn's ending
            found.stopping = True
            found.task.cancel()
        return found.turn_id

    async def drain(self, within: float) -> None:
        """At shutdown: let running turns finish and be stored (bounded), then stop the rest."""
        tasks = [r.task for r in list(self._running.values()) if r.task is not None]
        if not tasks:
            return
        log.info("waiting up to %g s for %d running turns", within, len(self._running))
        _, pending = await asyncio.wait(tasks, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
