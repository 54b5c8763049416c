"""From a validated chat request to the agent's turn and its event stream, for every transport."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from quart import g

from msev15.agent.approvals import ApprovalError
from msev15.agent.events import ApprovalAnswer, Event, Turn
from msev15.logs import session_id_var, tenant_id_var
from msev15.web.auth import authorize
from msev15.web.errors import BadRequest
from msev15.web.schemas import ChatRequest, TenantQuery
from msev15.web.services import services
from msev15.web.streaming import pump


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


def stream_events(turn: Turn, keepalive: float | None = None) -> AsyncGenerator[Event | None, None]:
    """The event stream of a turn for the streaming transports (close it with aclosing)."""
    return pumped(pump(services().agent.run(turn), keepalive=keepalive))


def pumped(events: AsyncIterator[Event | None]) -> AsyncGenerator[Event | None, None]:
    """`pump` is an async generator; say so, so callers may close it deterministically."""
    return cast(AsyncGenerator[Event | None, None], events)
