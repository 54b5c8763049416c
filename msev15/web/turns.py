"""From a validated chat request to the agent's turn and its event stream, for every transport."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from quart import g

from msev15.agent.events import ApprovalAnswer, Event, Turn
from msev15.agent.loop import TurnRefused
from msev15.logs import session_id_var, tenant_id_var
from msev15.principal import Principal
from msev15.web.auth import authorize
from msev15.web.errors import AppError, BadRequest, NotFound, Unavailable
from msev15.web.schemas import ChatRequest, TenantQuery
from msev15.web.services import services
from msev15.web.streaming import start

_REFUSALS: dict[str, type[AppError]] = {
    "validation_error": BadRequest,
    "not_found": NotFound,
    "unavailable": Unavailable,
}


def asked_principal(asked: ChatRequest | TenantQuery) -> Principal:
    """Who asks: the credential's tenant and user; a `tenant_id` or `user_id` the client actually
    sent must agree with a credential that fixes them (403)."""
    sent = asked.model_fields_set
    user = getattr(asked, "user_id", None) if "user_id" in sent else None
    principal = authorize(asked.tenant_id if "tenant_id" in sent else None, user)
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


async def open_stream(turn: Turn, keepalive: float | None = None) -> AsyncGenerator[Event | None, None]:
    """The turn's events for a streaming transport, once it is under way (close it with aclosing);
    an AppError when it is refused before anything is streamed."""
    agent = services().agent
    try:
        return await start(lambda ready: agent.run(turn, ready), keepalive=keepalive)
    except TurnRefused as exc:
        raise refusal(exc) from None
