"""Chat over HTTP: the JSON endpoint (the event stream, collected) and the SSE stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response
from quart_schema import document_response, tag

from msev15.agent.events import Turn
from msev15.jsonio import iso, loads, utcnow
from msev15.metrics import metrics
from msev15.web.auth import require_credentials
from msev15.web.errors import AppError, BadRequest, NotFound, Unavailable, json_response
from msev15.web.schemas import ChatRequest, ChatResponse, ErrorResponse, json_body
from msev15.web.turns import follow, sse_frame, start_turn, turn_from

routes = Blueprint("chat", __name__, url_prefix="/api/v1")
routes.before_request(require_credentials)

KEEPALIVE_SECONDS = 15.0
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
    return await _collected(turn, await start_turn(turn))


async def _collected(turn: Turn, turn_id: str) -> Response:
    calls: dict[str, dict[str, Any]] = {}
    approvals: list[dict[str, Any]] = []
    async for item in await follow(turn_id):
        if item is None:
            continue
        event = loads(item[1])
        kind = event["type"]
        if kind == "tool_call":
            calls[event["id"]] = {"id": event["id"], "name": event["name"], "arguments": event["arguments"]}
            calls[event["id"]]["ok"] = False
        elif kind == "tool_result":
            calls.setdefault(event["id"], {"id": event["id"], "name": event["name"], "arguments": {}})
            calls[event["id"]]["ok"] = event["ok"]
        elif kind == "approval_required":
            approvals.append({k: event[k] for k in ("id", "name", "arguments", "summary")})
        elif kind == "error":
            raise _ERRORS.get(event["code"], AppError)(event["error"])
        elif kind == "done":
            body: dict[str, Any] = {
                "session_id": turn.session_id,
                "tenant_id": turn.tenant_id,
                "message": event["message"],
                "timestamp": iso(utcnow()),
                "message_count": event["message_count"],
                "request_id": turn.request_id,
                "turn_id": turn_id,
                "tool_calls": list(calls.values()),
            }
            if event.get("interrupted"):
                body["interrupted"] = True
            if approvals:
                body["approvals_required"] = approvals
            return json_response(body)
    raise AppError("the turn ended without an answer")


@routes.post("/chat/stream")
@tag(["chat"])
@json_body(ChatRequest)
@document_response(ErrorResponse, 400)
async def chat_stream(data: ChatRequest) -> Response:
    """Send a message and get the answer as Server-Sent Events (one `data:` JSON per event)."""
    turn = turn_from(data)
    turn_id = await start_turn(turn)  # refusals are still plain errors here
    return sse_response(turn_id, await follow(turn_id, idle=KEEPALIVE_SECONDS))


def sse_response(turn_id: str, events: AsyncIterator[tuple[int, bytes] | None]) -> Response:
    """A turn's events as Server-Sent Events, each with its resume id; the turn outlives the stream."""

    async def body() -> AsyncIterator[bytes]:
        gauge = metrics().sse
        gauge.inc()
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for item in events:
                    yield b": keep-alive\n\n" if item is None else sse_frame(turn_id, *item)
        finally:
            gauge.dec()

    response = Response(body(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None  # a stream lasts as long as the turn; the agent bounds it
    return response
