"""Session routes (list, history, delete) and the audit log, all scoped to the caller's tenant."""

from __future__ import annotations

import re
from typing import Any

from quart import Blueprint, Response, request
from quart_schema import document_response, tag

from msev15.agent.approvals import PENDING_KEY, public_pending
from msev15.jsonio import iso
from msev15.logs import session_id_var
from msev15.principal import Principal
from msev15.stores.sessions.base import visible
from msev15.web.auth import require_credentials, require_shop_credentials
from msev15.web.chat import KEEPALIVE_SECONDS, sse_response
from msev15.web.errors import BadRequest, NotFound, Unavailable, json_response
from msev15.web.schemas import (
    AuditPage,
    AuditQuery,
    Deleted,
    ErrorResponse,
    ScopeQuery,
    SessionHistory,
    SessionList,
    Stopped,
    StreamQuery,
    check_identifier,
    parse_query,
    query_params,
)
from msev15.web.services import services
from msev15.web.turns import asked_principal, follow, resume_target

routes = Blueprint("sessions", __name__, url_prefix="/api/v1")
_TURN_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
routes.before_request(require_credentials)


@routes.get("/sessions")
@query_params(ScopeQuery)
@tag(["sessions"])
@document_response(SessionList)
async def list_sessions() -> Response:
    """The caller's sessions, most recently active first: a client token's own, or the tenant's
    (filtered to one end user with `user_id`)."""
    who = asked_principal(parse_query(ScopeQuery, request.args))
    found = await services().sessions.list(who.tenant_id, who.scope)
    return json_response(
        {"tenant_id": who.tenant_id, "sessions": [s.summary() for s in found], "count": len(found)}
    )


@routes.get("/sessions/<session_id>/history")
@query_params(ScopeQuery)
@tag(["sessions"])
@document_response(SessionHistory)
@document_response(ErrorResponse, 404)
async def session_history(session_id: str) -> Response:
    """Every stored message of one session."""
    who, session_id = _session_target(session_id)
    session = await services().sessions.get(who.tenant_id, session_id, who.scope)
    if session is None:
        raise NotFound(f"session {session_id!r} was not found")
    return json_response(
        {
            "session_id": session.session_id,
            "tenant_id": session.tenant_id,
            "user_id": session.user_id,
            "messages": [m.to_api() for m in session.messages],
            "created_at": iso(session.created_at),
            "last_activity": iso(session.last_activity),
            "metadata": _public_metadata(session.metadata),
        }
    )


@routes.delete("/sessions/<session_id>")
@query_params(ScopeQuery)
@tag(["sessions"])
@document_response(Deleted)
@document_response(ErrorResponse, 404)
async def delete_session(session_id: str) -> Response:
    """Forget a session and its history."""
    who, session_id = _session_target(session_id)
    store = services().sessions
    async with store.lock(who.tenant_id, session_id):  # never delete under a running turn
        deleted = await store.delete(who.tenant_id, session_id, who.scope)
    if not deleted:
        raise NotFound(f"session {session_id!r} was not found")
    return json_response({"deleted": True, "session_id": session_id, "tenant_id": who.tenant_id})


@routes.get("/sessions/<session_id>/stream")
@query_params(StreamQuery)
@tag(["sessions"])
@document_response(ErrorResponse, 404)
async def resume_stream(session_id: str) -> Response:
    """Resume an answer: the events after `Last-Event-ID` (or `after`), then live, as SSE.

    Without a position: the session's running answer, or its latest one while it is buffered.
    """
    query = parse_query(StreamQuery, request.args)
    who = asked_principal(query)
    session_id = check_identifier(session_id, "session_id")
    session_id_var.set(session_id)
    position = request.headers.get("Last-Event-ID") or query.after
    turn_id, after = None, 0
    if position:
        turn_id, seq = _position(position)
        after = seq
    turn_id, after = await resume_target(who, session_id, turn_id, after)
    return sse_response(turn_id, await follow(turn_id, after, idle=KEEPALIVE_SECONDS))


@routes.post("/sessions/<session_id>/stop")
@query_params(ScopeQuery)
@tag(["sessions"])
@document_response(Stopped)
@document_response(ErrorResponse, 404)
async def stop_turn(session_id: str) -> Response:
    """Stop the session's running answer (the customer's stop button); it ends `interrupted`."""
    who, session_id = _session_target(session_id)
    runner = services().runner
    running = runner.running(who.tenant_id, session_id)
    if running is not None:  # a first turn's session is not stored yet: its turn says whose it is
        info = await runner.buffer.info(running)
        if info is None or not visible(info.user_id, who.scope):
            raise NotFound(f"session {session_id!r} was not found")
    elif await services().sessions.get(who.tenant_id, session_id, who.scope) is None:
        raise NotFound(f"session {session_id!r} was not found")
    stopped = runner.stop(who.tenant_id, session_id, who.scope)
    return json_response({"stopped": stopped is not None, "session_id": session_id, "turn_id": stopped})


def _position(raw: str) -> tuple[str, int]:
    turn_id, _, seq = raw.rpartition(":")
    if not _TURN_ID.match(turn_id) or not seq.isdigit() or len(seq) > 9:
        raise BadRequest(
            "the resume position must be <turn_id>:<seq>",
            [{"field": "Last-Event-ID", "message": "expected <turn_id>:<seq>"}],
        )
    return turn_id, int(seq)


def _session_target(session_id: str) -> tuple[Principal, str]:
    who = asked_principal(parse_query(ScopeQuery, request.args))
    session_id_var.set(session_id)
    return who, check_identifier(session_id, "session_id")


def _public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a client may see: pending approvals (for the page's cards), not internal bookkeeping."""
    public = {k: v for k, v in metadata.items() if not k.startswith("_")}
    if PENDING_KEY in public:
        public[PENDING_KEY] = public_pending(metadata)
    return public


@routes.get("/audit")
@query_params(AuditQuery)
@tag(["audit"])
@document_response(AuditPage)
async def audit_events() -> Response:
    """The tenant's tool calls and approval decisions, newest first; `cursor` pages back.

    For the shop's own servers: a client token gets a 403."""
    require_shop_credentials()
    query = parse_query(AuditQuery, request.args)
    who = asked_principal(query)
    audit = services().audit
    if audit is None:
        raise Unavailable("the audit log is not available")
    events, cursor = await audit.events(
        who.tenant_id, query.session_id, query.limit, query.cursor, who.user_id
    )
    return json_response({"events": events, "next_cursor": str(cursor) if cursor else None})
