"""What goes into a turn and the events that come out: one wire form for every transport."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from msev15.principal import ANY_USER, Principal, UserScope


@dataclass(frozen=True, slots=True)
class TokenEvent:
    content: str
    type: Literal["token"] = "token"


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    id: str
    name: str
    arguments: dict[str, Any]
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    id: str
    name: str
    ok: bool
    content: str | None = None
    error: str | None = None
    type: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class ApprovalRequiredEvent:
    id: str
    name: str
    arguments: dict[str, Any]
    summary: str
    type: Literal["approval_required"] = "approval_required"


@dataclass(frozen=True, slots=True)
class DoneEvent:
    message: str
    message_count: int
    request_id: str
    interrupted: bool = False
    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: str
    code: str
    details: tuple[dict[str, str], ...] = ()
    type: Literal["error"] = "error"


Event = TokenEvent | ToolCallEvent | ToolResultEvent | ApprovalRequiredEvent | DoneEvent | ErrorEvent


def event_dict(event: Event, tenant_id: str | None = None, session_id: str | None = None) -> dict[str, Any]:
    """The wire form of API.md: the event's fields plus session and tenant (when the event has them).

    Every transport frames this dict; none builds an event body by hand.
    """
    if isinstance(event, TokenEvent):  # the hot path: skip asdict's deep copy
        body: dict[str, Any] = {"type": "token", "content": event.content}
    else:
        body = asdict(event)
        if isinstance(event, ToolResultEvent):
            body.pop("error" if event.ok else "content")
        elif isinstance(event, DoneEvent) and not event.interrupted:
            del body["interrupted"]
        elif isinstance(event, ErrorEvent):
            body["details"] = list(event.details)
    if session_id is not None:
        body["session_id"] = session_id
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    return body


@dataclass(frozen=True, slots=True)
class ApprovalAnswer:
    id: str
    approve: bool


@dataclass(frozen=True, slots=True)
class Turn:
    tenant_id: str
    session_id: str
    request_id: str
    message: str | None
    approvals: tuple[ApprovalAnswer, ...] = ()
    principal: Principal | None = None  # None: the tenant itself (tests, tools run by the shop)

    @property
    def scope(self) -> UserScope:
        """The sessions this turn may see and write: its end user's, or the whole tenant's."""
        return self.principal.scope if self.principal is not None else ANY_USER
