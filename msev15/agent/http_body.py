"""A response body on the lean transport's connection (agent/transport.py), read by its framing.

Chunks the server wrote together are handed over together, and the read timeout is one lazily
re-armed timer per body rather than one per chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2

_READ_SIZE = 64 * 1024


class Body(httpx2.AsyncByteStream):
    """A response body read off its connection by its framing: `("length", n)`, `("chunked", 0)`,
    `("close", 0)` (until the server closes) or `("empty", 0)`.

    `release(complete)` is called once, when the body is read to its end or abandoned: only a
    connection whose body was read whole can carry another response.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        framing: tuple[str, int],
        read_timeout: float | None,
        request: httpx2.Request,
        release: Callable[[bool], None],
    ) -> None:
        self._reader: asyncio.StreamReader | None = reader
        self._framing = framing
        self._timeout = read_timeout
        self._request = request
        self._on_release: Callable[[bool], None] | None = release
        self._complete = framing[0] == "empty"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._reader is None or self._complete:
            return
        reader = self._reader
        kind, remaining = self._framing
        clock = _ReadClock(self._timeout)
        try:
            if kind == "length":
                while remaining > 0:
                    clock.reading()
                    data = await reader.read(min(remaining, _READ_SIZE))
                    clock.idle()
                    if not data:
                        raise httpx2.RemoteProtocolError("the body ended early", request=self._request)
                    remaining -= len(data)
                    yield data
            elif kind == "chunked":
                while True:
                    clock.reading()
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass  # trailers
                        break
                    data = await reader.readexactly(size + 2)
                    parts = [data[:-2]]
                    while (whole := _buffered_chunk(reader)) is not None:  # handed over together
                        start, end = whole
                        data = await reader.readexactly(end)  # already here: returns at once
                        parts.append(data[start:-2])
                    clock.idle()
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
            else:
                while True:
                    clock.reading()
                    data = await reader.read(_READ_SIZE)
                    clock.idle()
                    if not data:
                        break
                    yield data
            self._complete = True
        except asyncio.CancelledError:
            if clock.expired():
                raise httpx2.ReadTimeout("the server stopped sending", request=self._request) from None
            raise
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            raise httpx2.RemoteProtocolError("the body broke off", request=self._request) from None
        finally:
            clock.close()
            self._release()

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        release, self._on_release, self._reader = self._on_release, None, None
        if release is not None:
            release(self._complete)


class _ReadClock:
    """The read timeout of a body: no single read may wait longer than `timeout`.

    What `asyncio.timeout` around each read does, for a fraction of its cost on a long stream:
    a read only notes when it began, and the one timer re-arms itself lazily when it fires, so a
    streamed answer costs a timer per `timeout` seconds instead of one per chunk. Time the
    consumer spends between reads does not count.
    """

    __slots__ = ("_timeout", "_loop", "_task", "_began", "_timer", "_expired")

    def __init__(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None  # the one reading now
        self._began: float | None = None  # when the read in progress began; None between reads
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def reading(self) -> None:
        if self._timeout is None:
            return
        self._task = asyncio.current_task()
        self._began = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._began + self._timeout, self._check)

    def idle(self) -> None:
        self._began = None

    def _check(self) -> None:
        self._timer = None
        if self._began is None or self._timeout is None:
            return  # between reads: the next read arms it again
        due = self._began + self._timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
        elif self._task is not None:
            self._expired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Whether the cancellation being handled is this clock's (then it is taken back)."""
        if not self._expired or self._task is None:
            return False
        self._expired = False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _buffered_chunk(reader: asyncio.StreamReader) -> tuple[int, int] | None:
    """Where the data of the next chunk starts and its frame ends, if the whole chunk is already in
    the reader's buffer (never the last, empty chunk): a model that wrote many SSE events at once
    then costs one pass through the layers above instead of one per event. Never waits, so a
    chunk that is still on its way is not held back for the next.
    """
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]  # CPython's StreamReader, 3.8+
    line_end = buffer.find(b"\r\n", 0, 64)
    if line_end < 0:
        return None
    try:
        size = int(bytes(buffer[:line_end]).split(b";", 1)[0].strip() or b"0", 16)
    except ValueError:
        return None  # let the reading loop above raise it
    end = line_end + 2 + size + 2
    return (line_end + 2, end) if size and len(buffer) >= end else None
