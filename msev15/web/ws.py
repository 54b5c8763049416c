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
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response, current_app, g, websocket
from quart_rate_limiter import RateLimitExceeded

from msev15.agent.events import ErrorEvent, event_dict
from msev15.jsonio import dumps, loads
from msev15.logs import request_id_var
from msev15.metrics import metrics
from msev15.principal import UserScope
from msev15.web.auth import from_trusted_proxy, require_credentials
from msev15.web.errors import AppError, Forbidden, rate_limited, render, validation_details
from msev15.web.ratelimit import count_frame
from msev15.web.schemas import ChatRequest, Identifier, TurnId
from msev15.web.services import services
from msev15.web.turns import asked_principal, follow, resume_target, start_turn, turn_from

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
    gauge = metrics().websockets
    gauge.inc()
    try:
        await _Channel().serve()
    finally:
        gauge.dec()
    return None


class ResumeFrame(BaseModel):
    """A `resume` frame: replay a turn after `after`, then follow it live."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["resume"]
    session_id: Identifier
    tenant_id: Identifier = "default"
    turn_id: TurnId
    after: int = Field(0, ge=0)


class _Channel:
    """One socket's state: the send lock, the queued jobs (run one after another by the worker) and
    the turn it is following.

    Closing the socket stops the following, never the turn: a client may resume it elsewhere.
    """

    def __init__(self) -> None:
        self._send_lock = asyncio.Lock()
        self._jobs: deque[ChatFrame | ResumeFrame] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._turn: tuple[str, str, UserScope, str] | None = None  # tenant, session, scope, turn id followed

    async def serve(self) -> None:
        """Read frames until the client leaves; Quart cancels this task on disconnect."""
        try:
            while True:
                await self._on_frame(await websocket.receive())
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop following and the worker; running turns go on and stay resumable."""
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

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
            await self._send_text(dumps({"type": "pong"}))
        elif kind == "stop":
            self._stop()
        elif kind in ("chat", "resume"):
            await self._queue(frame, ChatFrame if kind == "chat" else ResumeFrame)
        else:
            await self._error(
                "unknown frame type; expected chat, resume, ping or stop",
                [{"field": "type", "message": "must be 'chat', 'resume', 'ping' or 'stop'"}],
            )

    async def _queue(self, frame: dict[str, Any], model: type[ChatFrame] | type[ResumeFrame]) -> None:
        try:
            job = model.model_validate(frame)
        except ValidationError as exc:
            await self._error(f"{frame['type']} frame is invalid", validation_details(exc))
            return
        try:
            await count_frame(current_app)  # a frame that starts work spends the API budget like a request
        except RateLimitExceeded as exc:
            refusal = rate_limited(exc)
            await self._error(refusal.message, None, refusal.code)
            return
        if len(self._jobs) >= MAX_QUEUED_CHATS:
            await self._error("too many chats queued on this socket; wait for `done`")
            return
        self._jobs.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="ws-chats")

    def _stop(self) -> None:
        """The customer's stop: the turn ends with `done` marked interrupted, which this socket relays."""
        if self._turn is not None:
            services().runner.stop(*self._turn)

    async def _work(self) -> None:
        """Run queued jobs in order; a failure ends only its job (the next one still runs)."""
        while self._jobs:
            job = self._jobs.popleft()
            g.request_id = uuid.uuid4().hex  # one id per turn, as each HTTP request has its own
            request_id_var.set(g.request_id)
            try:
                await (self._chat(job) if isinstance(job, ChatFrame) else self._resume(job))
            except Exception as failure:
                log.warning("websocket job ended early: %r", failure)  # e.g. the send failed
            finally:
                self._turn = None

    async def _chat(self, frame: ChatFrame) -> None:
        try:
            turn = turn_from(frame)
            turn_id = await start_turn(turn)
        except AppError as exc:  # refused before it began: an error event, as REST gives a status
            await self._error(exc.message, exc.details, exc.code, frame.session_id)
            return
        self._turn = (turn.tenant_id, turn.session_id, turn.scope, turn_id)
        await self._relay(await follow(turn_id))

    async def _resume(self, frame: ResumeFrame) -> None:
        try:
            who = asked_principal(frame)
            turn_id, after = await resume_target(who, frame.session_id, frame.turn_id, frame.after)
            events = await follow(turn_id, after)
        except AppError as exc:
            await self._error(exc.message, exc.details, exc.code, frame.session_id)
            return
        self._turn = (who.tenant_id, frame.session_id, who.scope, turn_id)  # a stop frame stops it too
        await self._relay(events)

    async def _relay(self, events: AsyncIterator[tuple[int, bytes] | None]) -> None:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for item in events:
                if item is not None:
                    await self._send_text(item[1].decode())

    async def _error(
        self,
        message: str,
        details: list[dict[str, str]] | None = None,
        code: str = "validation_error",
        session_id: str | None = None,
    ) -> None:
        error = ErrorEvent(message, code, tuple(details or ()))
        await self._send_text(dumps(event_dict(error, session_id=session_id)))

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:  # the reader and the worker both send; frames must not interleave
            await websocket.send(text)
