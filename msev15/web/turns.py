"""From a validated chat request to the agent's turn and its event stream, for every transport."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from quart import g

from msev15.agent.approvals import ApprovalError
from msev15.agent.events import ApprovalAnswer, Event, Turn
from msev15.logs import session_id_var, tenant_id_var
from msev15.principal import Principal
from msev15.stores.sessions import SessionOwnedElsewhere
from msev15.web.auth import authorize
from msev15.web.errors import BadRequest, NotFound
from msev15.web.schemas import ChatRequest, TenantQuery
from msev15.web.services import services
from msev15.web.streaming import pump


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


async def precheck(turn: Turn) -> None:
    """Before any stream starts: another user's session is a 404, bad approval answers a 400."""
    try:
        await services().agent.precheck(turn)
    except SessionOwnedElsewhere:
        raise NotFound(f"session {turn.session_id!r} was not found") from None
    except ApprovalError as exc:
        raise BadRequest(str(exc), [{"field": "approvals", "message": str(exc)}]) from None


def stream_events(turn: Turn, keepalive: float | None = None) -> AsyncGenerator[Event | None, None]:
    """The event stream of a turn for the streaming transports (close it with aclosing)."""
    return pumped(pump(services().agent.run(turn), keepalive=keepalive))


def pumped(events: AsyncIterator[Event | None]) -> AsyncGenerator[Event | None, None]:
    """`pump` is an async generator; say so, so callers may close it deterministically."""
    return cast(AsyncGenerator[Event | None, None], events)
