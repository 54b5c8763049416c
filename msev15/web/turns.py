"""From a validated chat request to the agent's turn and its event stream, for every transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

from pydantic import BaseModel
from quart import g

from msev15.agent.events import ApprovalAnswer, Turn
from msev15.agent.turn_state import TurnRefused
from msev15.logs import session_id_var, tenant_id_var
from msev15.principal import Principal
from msev15.stores.sessions.base import visible
from msev15.stores.turns import TurnGone
from msev15.web.auth import authorize
from msev15.web.errors import AppError, BadRequest, NotFound, Unavailable
from msev15.web.schemas import ChatRequest
from msev15.web.services import services

_REFUSALS: dict[str, type[AppError]] = {
    "validation_error": BadRequest,
    "not_found": NotFound,
    "unavailable": Unavailable,
}


def asked_principal(asked: BaseModel) -> Principal:
    """Who asks: the credential's tenant and user; a `tenant_id` or `user_id` the client actually
    sent must agree with a credential that fixes them (403)."""
    sent = asked.model_fields_set
    tenant = getattr(asked, "tenant_id", None) if "tenant_id" in sent else None
    user = getattr(asked, "user_id", None) if "user_id" in sent else None
    principal = authorize(tenant, user)
    tenant_id_var.set(principal.tenant_id)
    return principal


def turn_from(data: ChatRequest) -> Turn:
    """Authorise the caller and build the agent's input; shared by every transport."""
    principal = asked_principal(data)
    session_id_var.set(data.session_id)
    approvals = tuple(ApprovalAnswer(a.id, a.approve) for a in data.approvals or ())
    return Turn(principal.tenant_id, data.session_id, g.request_id, data.message, approvals, principal)


def refusal(exc: TurnRefused) -> AppError:
    """A turn refused before anything was streamed, as the API's error (with Retry-After for 503)."""
    error = _REFUSALS.get(exc.code, AppError)(exc.message)
    if exc.field is not None:
        error.details = [{"field": exc.field, "message": exc.message}]
    if exc.retry_after is not None:
        error.headers["Retry-After"] = str(exc.retry_after)
    return error


async def start_turn(turn: Turn) -> str:
    """Start the turn (it runs on whatever happens to this connection); its id, or an AppError
    when it is refused before anything is streamed."""
    try:
        return await services().runner.start(turn)
    except TurnRefused as exc:
        raise refusal(exc) from None


async def follow(
    turn_id: str, after: int = 0, idle: float | None = None
) -> AsyncIterator[tuple[int, bytes] | None]:
    """A turn's numbered events after `after`, then live (None: a keep-alive tick); 404 when gone."""
    try:
        return await services().runner.buffer.read(turn_id, after, idle)
    except TurnGone:
        raise NotFound("that answer is no longer available; read the session history instead") from None


def sse_frame(turn_id: str, seq: int, data: bytes) -> bytes:
    """One SSE event with its resume position (`id: <turn_id>:<seq>`)."""
    return b"id: " + f"{turn_id}:{seq}".encode() + b"\ndata: " + data + b"\n\n"


async def resume_target(who: Principal, session_id: str, turn_id: str | None, after: int) -> tuple[str, int]:
    """The turn a resume reads, checked as history is: this tenant's session, visible to the caller.

    Without a turn id: the session's running turn, or its latest one while it is buffered.
    """
    buffer = services().runner.buffer
    info = await (buffer.info(turn_id) if turn_id else buffer.latest(who.tenant_id, session_id))
    if info is None or (info.tenant_id, info.session_id) != (who.tenant_id, session_id):
        raise NotFound(f"no answer of session {session_id!r} can be resumed; read its history instead")
    if not visible(info.user_id, who.scope):
        raise NotFound(f"no answer of session {session_id!r} can be resumed; read its history instead")
    return info.turn_id, after
