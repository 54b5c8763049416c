"""Chat over HTTP: the JSON endpoint (the event stream, collected) and the SSE stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response
from quart_schema import document_response, tag

from msev15.agent.events import (
    ApprovalRequiredEvent,
    DoneEvent,
    ErrorEvent,
    ToolCallEvent,
    ToolResultEvent,
    Turn,
    event_dict,
)
from msev15.agent.loop import TurnRefused
from msev15.jsonio import dumpb, iso, utcnow
from msev15.web.auth import require_credentials
from msev15.web.errors import AppError, BadRequest, NotFound, Unavailable, json_response
from msev15.web.schemas import ChatRequest, ChatResponse, ErrorResponse, json_body
from msev15.web.services import services
from msev15.web.turns import open_stream, refusal, turn_from

routes = Blueprint("chat", __name__, url_prefix="/api/v1")
routes.before_request(require_credentials)

_ERRORS: dict[str, type[AppError]] = {
    "validation_error": BadRequest,
    "unavailable": Unavailable,
    "not_found": NotFound,
}


@routes.post("/chat")
@tag(["chat"])
@json_body(ChatRequest)
@document_response(ChatResponse)
@document_response(ErrorResponse, 400)
async def chat(data: ChatRequest) -> Response:
    """Send a message and get the whole answer (the event stream, collected)."""
    turn = turn_from(data)
    try:
        return await _collected(turn)
    except TurnRefused as exc:
        raise refusal(exc) from None


async def _collected(turn: Turn) -> Response:
    calls: dict[str, dict[str, Any]] = {}
    approvals: list[dict[str, Any]] = []
    async for event in services().agent.run(turn):
        if isinstance(event, ToolCallEvent):
            calls[event.id] = {"id": event.id, "name": event.name, "arguments": event.arguments, "ok": False}
        elif isinstance(event, ToolResultEvent):
            calls.setdefault(event.id, {"id": event.id, "name": event.name, "arguments": {}})["ok"] = event.ok
        elif isinstance(event, ApprovalRequiredEvent):
            approvals.append(
                {"id": event.id, "name": event.name, "arguments": event.arguments, "summary": event.summary}
            )
        elif isinstance(event, ErrorEvent):
            raise _error_for(event)
        elif isinstance(event, DoneEvent):
            body: dict[str, Any] = {
                "session_id": turn.session_id,
                "tenant_id": turn.tenant_id,
                "message": event.message,
                "timestamp": iso(utcnow()),
                "message_count": event.message_count,
                "request_id": turn.request_id,
                "tool_calls": list(calls.values()),
            }
            if approvals:
                body["approvals_required"] = approvals
            return json_response(body)
    raise AppError("the turn ended without an answer")


def _error_for(event: ErrorEvent) -> AppError:
    return _ERRORS.get(event.code, AppError)(event.error)


@routes.post("/chat/stream")
@tag(["chat"])
@json_body(ChatRequest)
@document_response(ErrorResponse, 400)
async def chat_stream(data: ChatRequest) -> Response:
    """Send a message and get the answer as Server-Sent Events (one `data:` JSON per event)."""
    turn = turn_from(data)
    stream = await open_stream(turn, keepalive=15.0)  # refusals are still plain errors here

    async def body() -> AsyncIterator[bytes]:
        # aclosing: when the client goes away mid-answer the turn is cancelled now, not at GC time.
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if event is None:
                    yield b": keep-alive\n\n"
                else:
                    yield b"data: " + dumpb(event_dict(event, turn.tenant_id, turn.session_id)) + b"\n\n"

    response = Response(body(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # a stream lasts as long as the turn; the agent bounds it
    return response
