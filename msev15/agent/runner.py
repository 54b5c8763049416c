"""Turns that outlive their connection: each runs in its own task and writes to the turn buffer.

A transport starts a turn, then reads its numbered events from the buffer like any resuming
client; closing the connection stops the reading, never the turn. Only a stop (the customer's
stop button or frame) cancels it; the turn then ends with `done` marked interrupted. Tokens that
arrive together leave as one event, numbered before they are stored, so a replay is identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from msev15.agent.events import DoneEvent, ErrorEvent, TokenEvent, Turn, event_dict
from msev15.agent.loop import Agent, TurnRefused
from msev15.principal import UserScope
from msev15.stores.sessions.base import visible
from msev15.stores.turns import TurnBuffer, TurnInfo

log = logging.getLogger(__name__)

_END: Any = object()
_STOPPED: Any = object()


def new_turn_id() -> str:
    return secrets.token_urlsafe(12)  # 16 characters of [A-Za-z0-9_-]


@dataclass(slots=True)
class _Running:
    turn: Turn
    turn_id: str
    agent_task: asyncio.Task[None] | None = None
    publisher: asyncio.Task[None] | None = None
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
        queue: asyncio.Queue[Any] = asyncio.Queue()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        run.agent_task = asyncio.create_task(self._produce(run, queue, ready), name="turn")
        try:
            await asyncio.shield(ready)
        except BaseException:  # refused before it began (or the caller left while it waited)
            run.agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.agent_task
            raise
        turn_key = (turn.tenant_id, turn.session_id)
        self._running[run.turn_id] = run
        self._by_session[turn_key] = run.turn_id
        run.publisher = asyncio.create_task(self._publish(run, queue), name="turn-publisher")
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

    async def _produce(self, run: _Running, queue: asyncio.Queue[Any], ready: asyncio.Future[None]) -> None:
        async def opened() -> None:
            await self._open(run)
            if not ready.done():
                ready.set_result(None)

        try:
            async for event in self.agent.run(run.turn, opened):
                queue.put_nowait(event)
        except TurnRefused as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            queue.put_nowait(ErrorEvent(exc.message, exc.code))
        except asyncio.CancelledError:
            if not ready.done():
                raise
            queue.put_nowait(_STOPPED)
        except Exception as exc:  # the agent turns its own failures into events; this is a last resort
            log.exception("turn %s failed", run.turn_id)
            if not ready.done():  # the caller answers 500 instead of waiting for ever
                ready.set_exception(exc)
                return
            queue.put_nowait(ErrorEvent("internal error", "internal_error"))
        finally:
            if not ready.done():
                ready.set_exception(RuntimeError("the turn ended before it began"))
            elif not ready.cancelled() and ready.exception() is None:
                queue.put_nowait(_END)

    async def _publish(self, run: _Running, queue: asyncio.Queue[Any]) -> None:
        """Number the events (tokens queued together merged into one) and store them in order: all
        that queued up while the last ones were stored go together, in one round trip."""
        turn, seq, ended = run.turn, 0, False
        try:
            while not ended:
                batch: list[tuple[int, bytes]] = []
                item = await queue.get()
                while True:
                    if item is _END:
                        ended = True
                        break
                    if item is _STOPPED:
                        item = await self._interrupted(run)
                    elif isinstance(item, TokenEvent) and not queue.empty():
                        item = _merged(item, queue)
                    if isinstance(item, TokenEvent):
                        run.text.append(item.content)
                    seq += 1
                    body = event_dict(item, turn.tenant_id, turn.session_id)
                    body["turn_id"], body["seq"] = run.turn_id, seq
                    batch.append((seq, orjson.dumps(body)))
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                if batch:
                    await self.buffer.extend(run.turn_id, batch)
        except Exception:
            log.exception("turn %s could not be buffered", run.turn_id)
        finally:
            try:
                await self.buffer.finish(run.turn_id)
            except Exception:  # its readers then stop at their idle bound, not at the end marker
                log.exception("turn %s could not be marked finished", run.turn_id)
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
        if not visible(owner, scope) or found.agent_task is None or found.agent_task.done():
            return None
        found.agent_task.cancel()
        return found.turn_id

    async def drain(self, within: float) -> None:
        """At shutdown: let running turns finish and be stored (bounded), then stop the rest."""
        tasks = [
            t for r in list(self._running.values()) for t in (r.agent_task, r.publisher) if t is not None
        ]
        if not tasks:
            return
        log.info("waiting up to %g s for %d running turns", within, len(self._running))
        _, pending = await asyncio.wait(tasks, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _merged(first: TokenEvent, queue: asyncio.Queue[Any]) -> TokenEvent:
    parts = [first.content]
    while not queue.empty():
        nxt = queue._queue[0]  # type: ignore[attr-defined]  # peek, no await
        if not isinstance(nxt, TokenEvent):
            break
        parts.append(queue.get_nowait().content)
    return TokenEvent("".join(parts))
