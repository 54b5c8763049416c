"""Runs a turn in its own task for the streaming transports (SSE, WebSocket).

A separate producer task lets a transport stop a turn (client gone, stop button) by cancelling
one task, lets tokens that arrive together leave as one event, and lets keep-alives flow while
the model thinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from msev15.agent.events import ErrorEvent, Event, TokenEvent

_END: Any = object()
KEEPALIVE = None


async def pump(
    events: AsyncIterator[Event], keepalive: float | None = 15.0, coalesce: bool = True
) -> AsyncIterator[Event | None]:
    """Yield the turn's events (tokens merged when already queued); `None` is a keep-alive tick."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    last_put = time.monotonic()

    async def produce() -> None:
        nonlocal last_put
        try:
            async for event in events:
                queue.put_nowait(event)
                last_put = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:  # the agent turns its own failures into events; this is a last resort
            queue.put_nowait(ErrorEvent("internal error", "internal_error"))
        finally:
            queue.put_nowait(_END)

    async def tick(interval: float) -> None:
        while True:
            await asyncio.sleep(interval - (time.monotonic() - last_put))
            if time.monotonic() - last_put >= interval:
                queue.put_nowait(KEEPALIVE)
                await asyncio.sleep(interval)

    producer = asyncio.create_task(produce(), name="turn")
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
