"""HTTP edge: chat (JSON and SSE), sessions, health and the page."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from quart import Blueprint, Quart, Response, g, render_template, request, websocket
from quart.globals import websocket_ctx
from quart_schema import document_response, hide, tag

from . import __version__
from .agent import (
    ApprovalAnswer,
    ApprovalRequiredEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    ToolCallEvent,
    ToolResultEvent,
    Turn,
    event_dict,
)
from .approvals import PENDING_KEY, ApprovalError, public_pending
from .errors import AppError, BadRequest, NotFound, Unavailable
from .jsonio import dumpb, iso, json_response, utcnow
from .logs import client_ip_var, request_id_var, session_id_var, tenant_id_var
from .schemas import (
    AuditPage,
    AuditQuery,
    ChatRequest,
    ChatResponse,
    Deleted,
    ErrorResponse,
    Health,
    Readiness,
    SessionHistory,
    SessionList,
    TenantQuery,
    check_identifier,
    json_body,
    parse_query,
    query_params,
)
from .security import authorize, client_ip, require_api_key
from .services import run_checks, services
from .streaming import pump

api = Blueprint("api", __name__, url_prefix="/api/v1")
health = Blueprint("health", __name__)
page = Blueprint("page", __name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ERRORS: dict[str, type[AppError]] = {"validation_error": BadRequest, "unavailable": Unavailable}


def install_request_context(app: Quart) -> None:
    """Request id, client ip and log context for every request and WebSocket."""

    async def _begin() -> None:
        source = websocket if websocket_ctx else request
        supplied = source.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request_id_var.set(g.request_id)
        client_ip_var.set(client_ip())
        session_id_var.set(None)
        tenant_id_var.set(None)

    app.before_request(_begin)
    app.before_websocket(_begin)

    @app.after_request
    async def _stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        return response


@api.before_request
async def _auth() -> None:
    require_api_key()


# Chat --------------------------------------------------------------------------------------


def asked_tenant(asked: ChatRequest | TenantQuery) -> str:
    """The request's tenant: the key's; a `tenant_id` the client actually sent must match it (403)."""
    return authorize(asked.tenant_id if "tenant_id" in asked.model_fields_set else None)


def turn_from(data: ChatRequest) -> Turn:
    """Authorise the tenant and build the agent's input; shared by every transport."""
    tenant = asked_tenant(data)
    session_id_var.set(data.session_id)
    tenant_id_var.set(tenant)
    approvals = tuple(ApprovalAnswer(a.id, a.approve) for a in data.approvals or ())
    return Turn(tenant, data.session_id, g.request_id, data.message, approvals)


async def precheck(turn: Turn) -> None:
    """Bad approval answers are a 400 before any stream starts."""
    try:
        await services().agent.precheck(turn)
    except ApprovalError as exc:
        raise BadRequest(str(exc), [{"field": "approvals", "message": str(exc)}]) from None


@api.post("/chat")
@tag(["chat"])
@json_body(ChatRequest)
@document_response(ChatResponse)
@document_response(ErrorResponse, 400)
async def chat(data: ChatRequest) -> Response:
    """Send a message and get the whole answer (the event stream, collected)."""
    turn = turn_from(data)
    await precheck(turn)
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


@api.post("/chat/stream")
@tag(["chat"])
@json_body(ChatRequest)
@document_response(ErrorResponse, 400)
async def chat_stream(data: ChatRequest) -> Response:
    """Send a message and get the answer as Server-Sent Events (one `data:` JSON per event)."""
    turn = turn_from(data)
    await precheck(turn)
    agent = services().agent

    async def body() -> AsyncIterator[bytes]:
        # aclosing: when the client goes away mid-answer the turn is cancelled now, not at GC time.
        async with contextlib.aclosing(_pumped(pump(agent.run(turn), keepalive=15.0))) as events:
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


def stream_events(turn: Turn) -> AsyncGenerator[Event | None, None]:
    """The event stream of a turn, as the WebSocket channel consumes it (close it with aclosing)."""
    return _pumped(pump(services().agent.run(turn), keepalive=None))


def _pumped(events: AsyncIterator[Event | None]) -> AsyncGenerator[Event | None, None]:
    """`pump` is an async generator; say so, so callers may close it deterministically."""
    return cast(AsyncGenerator[Event | None, None], events)


# Sessions ----------------------------------------------------------------------------------


@api.get("/sessions")
@query_params(TenantQuery)
@tag(["sessions"])
@document_response(SessionList)
async def list_sessions() -> Response:
    """The tenant's sessions, most recently active first."""
    query = parse_query(TenantQuery, request.args)
    tenant = asked_tenant(query)
    found = await services().sessions.list(tenant)
    return json_response({"tenant_id": tenant, "sessions": [s.summary() for s in found], "count": len(found)})


@api.get("/sessions/<session_id>/history")
@query_params(TenantQuery)
@tag(["sessions"])
@document_response(SessionHistory)
@document_response(ErrorResponse, 404)
async def session_history(session_id: str) -> Response:
    """Every stored message of one session."""
    tenant, session_id = _session_target(session_id)
    session = await services().sessions.get(tenant, session_id)
    if session is None:
        raise NotFound(f"session {session_id!r} was not found")
    return json_response(
        {
            "session_id": session.session_id,
            "tenant_id": session.tenant_id,
            "messages": [m.to_api() for m in session.messages],
            "created_at": iso(session.created_at),
            "last_activity": iso(session.last_activity),
            "metadata": _public_metadata(session.metadata),
        }
    )


@api.delete("/sessions/<session_id>")
@query_params(TenantQuery)
@tag(["sessions"])
@document_response(Deleted)
@document_response(ErrorResponse, 404)
async def delete_session(session_id: str) -> Response:
    """Forget a session and its history."""
    tenant, session_id = _session_target(session_id)
    store = services().sessions
    async with store.lock(tenant, session_id):  # never delete under a running turn
        deleted = await store.delete(tenant, session_id)
    if not deleted:
        raise NotFound(f"session {session_id!r} was not found")
    return json_response({"deleted": True, "session_id": session_id, "tenant_id": tenant})


def _session_target(session_id: str) -> tuple[str, str]:
    query = parse_query(TenantQuery, request.args)
    tenant = asked_tenant(query)
    session_id_var.set(session_id)
    tenant_id_var.set(tenant)
    return tenant, check_identifier(session_id, "session_id")


def _public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a client may see: pending approvals (for the page's cards), not internal bookkeeping."""
    public = {k: v for k, v in metadata.items() if not k.startswith("_")}
    if PENDING_KEY in public:
        public[PENDING_KEY] = public_pending(metadata)
    return public


@api.get("/audit")
@query_params(AuditQuery)
@tag(["audit"])
@document_response(AuditPage)
async def audit_events() -> Response:
    """The tenant's tool calls and approval decisions, newest first; `cursor` pages back."""
    query = parse_query(AuditQuery, request.args)
    tenant = asked_tenant(query)
    audit = services().audit
    if audit is None:
        raise Unavailable("the audit log is not available")
    events, cursor = await audit.events(tenant, query.session_id, query.limit, query.cursor)
    return json_response({"events": events, "next_cursor": str(cursor) if cursor else None})


# Health ------------------------------------------------------------------------------------


def _health_body() -> dict[str, Any]:
    return {"status": "healthy", "timestamp": iso(utcnow()), "uptime_seconds": services().uptime()}


@health.get("/health")
@tag(["health"])
@document_response(Health)
async def health_check() -> Response:
    """Is the process up? No outside calls."""
    return json_response(_health_body())


@health.get("/health/liveness")
@tag(["health"])
@document_response(Health)
async def liveness() -> Response:
    """Is the process up? No outside calls."""
    return json_response(_health_body())


@health.get("/health/readiness")
@tag(["health"])
@document_response(Readiness)
@document_response(Readiness, 503)
async def readiness() -> Response:
    """Can it serve? Database and model are critical; MCP and SMTP only degrade."""
    found = services()
    status, checks, warnings = await run_checks(found)
    body = {
        "status": status,
        "timestamp": iso(utcnow()),
        "uptime_seconds": found.uptime(),
        "checks": checks,
        "warnings": warnings,
    }
    return json_response(body, 503 if status == "unhealthy" else 200)


# Page --------------------------------------------------------------------------------------


@page.get("/")
@hide
async def index() -> str:
    """The chat page."""
    found = services()
    return await render_template("index.html", version=__version__, provider=found.model.provider)


@page.get("/docs")
@hide
async def docs() -> str:
    """A readable page for the OpenAPI document, served locally (no CDN)."""
    return await render_template("docs.html", version=__version__)
