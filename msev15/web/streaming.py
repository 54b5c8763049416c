"""Runs a turn in its own task for the streaming transports (SSE, WebSocket).

The task starts at once and the stream is handed over only when the turn is under way: until
the agent says it is ready (session locked and readable, approvals valid), a refusal is still an
exception the transport can answer with a plain error status. A separate producer task also lets
a transport stop a turn (client gone, stop button) by cancelling one task, lets tokens that
arrive together leave as one event, and lets keep-alives flow while the model thinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from msev15.agent.events import ErrorEvent, Event, TokenEvent
from msev15.agent.loop import TurnRefused

_END: Any = object()
KEEPALIVE = None

Run = Callable[[Callable[[], None]], AsyncIterator[Event]]


async def start(
    run: Run, keepalive: float | None = 15.0, coalesce: bool = True
) -> AsyncGenerator[Event | None, None]:
    """Start `run(ready)` in a task; return its events once it is ready, or raise its TurnRefused.

    The returned generator yields the events (tokens merged when already queued) and `None` as
    a keep-alive tick; closing it cancels the turn.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    last_put = time.monotonic()

    def mark_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    async def produce() -> None:
        nonlocal last_put
        try:
            async for event in run(mark_ready):
                queue.put_nowait(event)
                last_put = time.monotonic()
        except TurnRefused as exc:
            if not ready.done():
                ready.set_exception(exc)
                return
            queue.put_nowait(ErrorEvent(exc.message, exc.code))
        except asyncio.CancelledError:
            raise
        except Exception:  # the agent turns its own failures into events; this is a last resort
            queue.put_nowait(ErrorEvent("internal error", "internal_error"))
        finally:
            mark_ready()
            queue.put_nowait(_END)

    producer = asyncio.create_task(produce(), name="turn")
    try:
        await asyncio.shield(ready)
    except BaseException:  # refused, or the caller went away while the turn waited for its lock
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        raise
    return _consume(queue, producer, lambda: last_put, keepalive, coalesce)


async def _consume(
    queue: asyncio.Queue[Any],
    producer: asyncio.Task[None],
    last_put: Callable[[], float],
    keepalive: float | None,
    coalesce: bool,
) -> AsyncGenerator[Event | None, None]:
    async def tick(interval: float) -> None:
        while True:
            await asyncio.sleep(interval - (time.monotonic() - last_put()))
            if time.monotonic() - last_put() >= interval:
                queue.put_nowait(KEEPALIVE)
                await asyncio.sleep(interval)

    ticker = asyncio.create_task(tick(keepalive), name="keepalive") if keepalive else None
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if coalesce and isinstance(item, TokenEvent) and not queue.empty():
                parts = [item.content]
                while not queue.empty():
                    nxt = queue._queue[0]  # type: ignore[attr-defined]  # peek, no await
                    if not isinstance(nxt, TokenEvent):
                        break
                    parts.append(queue.get_nowait().content)
                item = TokenEvent("".join(parts))
            yield item
    finally:
        if ticker is not None:
            ticker.cancel()
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        if ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
