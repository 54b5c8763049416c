"""Pydantic models at the edge: what clients may send, and what they get back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from quart import request
from quart_schema.validation import (
    QUART_SCHEMA_QUERYSTRING_ATTRIBUTE,
    QUART_SCHEMA_REQUEST_ATTRIBUTE,
    DataSource,
)

from msev15.web.errors import BadRequest, FieldError, validation_details

ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=ID_PATTERN)]


TurnId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
Position = Annotated[str, StringConstraints(max_length=80, pattern=r"^[A-Za-z0-9_-]{8,64}:[0-9]{1,9}$")]

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _omit_not_null(schema: dict[str, Any]) -> None:
    """Document an optional field as "leave it out", not as "send null" (null is still accepted).

    The field stays a plain `X | None` in Python, so a bad value is one error at the field's own
    name (`message`), not one per union branch (`message.constrained-str`, `message.none`).
    """
    branches = [branch for branch in schema.pop("anyOf", []) if branch != {"type": "null"}]
    if len(branches) == 1:
        schema.update(branches[0])


class ApprovalIn(_Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    approve: bool


class ChatRequest(_Strict):
    """A customer message (or answers to pending approvals) for one session of one tenant."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"anyOf": [{"required": ["message"]}, {"required": ["approvals"]}]},
    )

    session_id: Identifier
    message: Annotated[str, StringConstraints(min_length=1, max_length=10_000, pattern=r"\S")] | None = Field(
        None, json_schema_extra=_omit_not_null
    )
    tenant_id: Identifier = "default"
    user_id: Identifier | None = Field(
        None,
        description="Tenant key only: act for this end user (a client token's user is fixed).",
        json_schema_extra=_omit_not_null,
    )
    approvals: Annotated[list[ApprovalIn], Field(min_length=1, max_length=50)] | None = Field(
        None, json_schema_extra=_omit_not_null
    )

    @model_validator(mode="after")
    def _message_or_approvals(self) -> ChatRequest:
        if self.message is None and self.approvals is None:
            raise FieldError("message", "Field required unless approvals are given")
        return self


class ToolCallOut(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]
    ok: bool


class ApprovalOut(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any]
    summary: str


class ChatResponse(BaseModel):
    session_id: str
    tenant_id: str
    message: str
    timestamp: str
    message_count: int
    request_id: str
    turn_id: str
    tool_calls: list[ToolCallOut]
    approvals_required: list[ApprovalOut] | None = None
    interrupted: bool | None = None


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    error: ErrorInfo
    request_id: str


class SessionSummary(BaseModel):
    session_id: str
    tenant_id: str
    user_id: str | None
    message_count: int
    created_at: str
    last_activity: str


class SessionList(BaseModel):
    tenant_id: str
    sessions: list[SessionSummary]
    count: int


class HistoryMessage(BaseModel):
    role: str
    content: str
    timestamp: str
    tool_calls: list[ToolCallOut] | None = None
    interrupted: bool | None = None


class SessionHistory(BaseModel):
    session_id: str
    tenant_id: str
    user_id: str | None
    messages: list[HistoryMessage]
    created_at: str
    last_activity: str
    metadata: dict[str, Any]


class Deleted(BaseModel):
    deleted: bool
    session_id: str
    tenant_id: str


class Health(BaseModel):
    status: str
    timestamp: str
    uptime_seconds: float


class Readiness(Health):
    checks: dict[str, str]
    warnings: list[str]


class TenantQuery(_Strict):
    tenant_id: Identifier = "default"


class ScopeQuery(TenantQuery):
    """Tenant-wide callers may name one end user; a client token's user is fixed (another is a 403)."""

    user_id: Identifier | None = None


EmailAddress = Annotated[
    str,
    StringConstraints(
        max_length=254, pattern=r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$", to_lower=True
    ),
]


class ClientTokenRequest(_Strict):
    """What the shop's backend asks for after its own login: a token for one of its customers."""

    user_id: Identifier
    customer_email: EmailAddress | None = Field(
        None, description="Set only when the shop has verified it: the tools then act for it alone."
    )
    ttl_seconds: int | None = Field(None, ge=60, le=604_800)


class VisitorTokenRequest(_Strict):
    """No fields: a visitor is whoever asks."""


class TokenOut(BaseModel):
    token: str
    tenant_id: str
    user_id: str
    customer_email: str | None
    expires_at: str


class StreamQuery(ScopeQuery):
    """Where to resume: `<turn_id>:<seq>` (the header Last-Event-ID wins when both are given)."""

    after: Position | None = None


class Stopped(BaseModel):
    stopped: bool
    session_id: str
    turn_id: str | None


class AuditQuery(ScopeQuery):
    session_id: Identifier | None = None
    limit: int = Field(50, ge=1, le=200)
    cursor: int | None = Field(None, ge=1)


class AuditEvent(BaseModel):
    at: str
    session_id: str
    request_id: str
    tool: str
    arguments: dict[str, Any]
    ok: bool | None
    error: str | None = None
    duration_ms: float | None = None
    decision: str | None = None
    user_id: str | None = None


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_cursor: str | None


M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


def json_body(model: type[M]) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Validate the body in one pass (orjson-speed parsing in pydantic), documented by quart-schema."""

    def decorator(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = parse_body(model, await request.get_data(as_text=False))
            return await func(*args, data=data, **kwargs)

        return wrapper

    return decorator


def parse_body(model: type[M], raw: str | bytes) -> M:
    """A JSON body validated into `model`; a 400 in the API's shape otherwise."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise BadRequest(
                "request body is not valid JSON", [{"field": "body", "message": "invalid JSON"}]
            ) from None
        raise BadRequest("request body is invalid", validation_details(exc)) from None


def parse_query(model: type[M], args: Any) -> M:
    """Validate query parameters (first value of each) into `model`."""
    try:
        return model.model_validate({key: args.get(key) for key in args})
    except ValidationError as exc:
        raise BadRequest("query parameters are invalid", validation_details(exc)) from None


def check_identifier(value: str, field: str) -> str:
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError as exc:
        raise BadRequest(
            f"{field} is invalid", [{"field": field, "message": err["msg"]} for err in exc.errors()]
        ) from None


def query_params(model: type[M]) -> Callable[[F], F]:
    """Document a route's query parameters (they are validated with `parse_query`)."""

    def decorator(func: F) -> F:
        setattr(func, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, model)
        return func

    return decorator
