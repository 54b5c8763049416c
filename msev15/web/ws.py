"""WebSocket chat channel: the same agent event stream as SSE, framed as JSON text messages.

One connection reads frames all the time (so `ping` and `stop` work while an answer streams) and
runs its chats one after another in a worker task that exists only while chats are queued.
Extension to API.md: `{"type": "stop"}` cancels the turn in flight; that turn then ends with a
`done` event carrying the partial text and `"interrupted": true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import Any, Literal

from pydantic import ValidationError
from quart import Blueprint, Response, current_app, g, websocket
from quart_rate_limiter import RateLimitExceeded

from msev15.agent.events import DoneEvent, ErrorEvent, TokenEvent, Turn, event_dict
from msev15.jsonio import dumps, loads
from msev15.logs import request_id_var
from msev15.web.auth import from_trusted_proxy, require_credentials
from msev15.web.errors import AppError, Forbidden, rate_limited, render, validation_details
from msev15.web.ratelimit import count_frame
from msev15.web.schemas import ChatRequest
from msev15.web.services import services
from msev15.web.turns import open_stream, turn_from

log = logging.getLogger(__name__)

routes = Blueprint("ws", __name__, url_prefix="/api/v1")

MAX_QUEUED_CHATS = 8


def check_origin() -> None:
    """A browser's handshake must come from the service's own origin or one CORS_ORIGINS lists by
    name (`*` admits no cross-origin socket: a socket carries the page's credentials)."""
    origin = websocket.headers.get("Origin")
    if origin is None:
        return  # not a browser: judged by its credentials alone
    secure = websocket.scheme in ("wss", "https") or _forwarded_proto() == "https"
    own = f"{'https' if secure else 'http'}://{websocket.host}"
    named = {o.rstrip("/") for o in services().settings.cors_origin_list if o != "*"}
    if origin.rstrip("/") != own and origin.rstrip("/") not in named:
        raise Forbidden("this origin may not open a WebSocket here")


def _forwarded_proto() -> str | None:
    """X-Forwarded-Proto, believed only from a trusted proxy (as X-Forwarded-For is)."""
    if not from_trusted_proxy():
        return None
    return websocket.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() or None


class ChatFrame(ChatRequest):
    """A `chat` frame: the body of POST /api/v1/chat plus the frame type."""

    type: Literal["chat"]


@routes.websocket("/chat/ws")
async def chat_ws() -> Response | None:
    """Chat over one long-lived socket; origin and credentials are checked before accept, so a
    refusal is a plain 401 or 403."""
    try:
        check_origin()
        require_credentials()
    except AppError as exc:
        return render(exc)
    await websocket.accept()
    await _Channel().serve()
    return None


class _Channel:
    """One socket's state: the send lock, the queued chats and the turn in flight."""

    def __init__(self) -> None:
        self._send_lock = asyncio.Lock()
        self._chats: deque[ChatFrame] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[None] | None = None
        self._stopped = False
        self._partial: list[str] = []

    async def serve(self) -> None:
        """Read frames until the client leaves; Quart cancels this task on disconnect."""
        try:
            while True:
                await self._on_frame(await websocket.receive())
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Cancel the turn and the worker and wait for them, so nothing outlives the socket."""
        tasks = [t for t in (self._current, self._worker) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _on_frame(self, raw: str | bytes) -> None:
        limit = services().settings.max_request_bytes  # the same cap as an HTTP body
        if len(raw) > limit:
            await self._error("frame is too large", [{"field": "frame", "message": f"over {limit} bytes"}])
            return
        try:
            frame = loads(raw)
        except ValueError:
            await self._error("frame is not valid JSON", [{"field": "frame", "message": "invalid JSON"}])
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ping":
            await self._send({"type": "pong"})
        elif kind == "stop":
            self._stop()
        elif kind == "chat":
            try:
                chat = ChatFrame.model_validate(frame)
            except ValidationError as exc:
                await self._error("chat frame is invalid", validation_details(exc))
                return
            try:
                await count_frame(current_app)  # a chat frame spends the client's API budget like a request
            except RateLimitExceeded as exc:
                refusal = rate_limited(exc)
                await self._error(refusal.message, None, refusal.code)
                return
            if len(self._chats) >= MAX_QUEUED_CHATS:
                await self._error("too many chats queued on this socket; wait for `done`")
                return
            self._chats.append(chat)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._work(), name="ws-chats")
        else:
            await self._error(
                "unknown frame type; expected chat, ping or stop",
                [{"field": "type", "message": "must be 'chat', 'ping' or 'stop'"}],
            )

    def _stop(self) -> None:
        if self._current is not None and not self._current.done():
            self._stopped = True
            self._current.cancel()

    async def _work(self) -> None:
        """Run queued chats in order; a stop cancels only the turn task, never this loop."""
        while self._chats:
            frame = self._chats.popleft()
            g.request_id = uuid.uuid4().hex  # one id per turn, as each HTTP request has its own
            request_id_var.set(g.request_id)
            try:
                turn = turn_from(frame)
            except AppError as exc:
                await self._error(exc.message, exc.details, exc.code, frame.session_id)
                continue
            self._stopped = False
            self._partial = []
            self._current = asyncio.create_task(self._stream(turn), name="ws-turn")
            await asyncio.wait({self._current})
            if self._current.cancelled():
                if self._stopped:
                    await self._send_interrupted(turn)
            elif (failure := self._current.exception()) is not None:  # e.g. the send failed
                log.warning("websocket turn ended early: %r", failure)
            self._current = None

    async def _stream(self, turn: Turn) -> None:
        try:
            stream = await open_stream(turn)
        except AppError as exc:  # refused before it began: an error event, as REST gives a status
            await self._error(exc.message, exc.details, exc.code, turn.session_id)
            return
        # aclosing: a cancel while sending still closes the pump, which cancels the agent at once.
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if event is None:
                    continue
                if isinstance(event, TokenEvent):
                    self._partial.append(event.content)
                await self._send(event_dict(event, turn.tenant_id, turn.session_id))

    async def _send_interrupted(self, turn: Turn) -> None:
        """End a stopped turn with `done` (partial text, interrupted), so every chat gets one end event."""
        session = await services().sessions.get(turn.tenant_id, turn.session_id)
        count = len(session.messages) if session is not None else 0
        done = DoneEvent("".join(self._partial), count, turn.request_id, interrupted=True)
        await self._send(event_dict(done, turn.tenant_id, turn.session_id))

    async def _error(
        self,
        message: str,
        details: list[dict[str, str]] | None = None,
        code: str = "validation_error",
        session_id: str | None = None,
    ) -> None:
        await self._send(event_dict(ErrorEvent(message, code, tuple(details or ())), session_id=session_id))

    async def _send(self, body: dict[str, Any]) -> None:
        async with self._send_lock:  # the reader and the turn both send; frames must not interleave
            await websocket.send(dumps(body))
