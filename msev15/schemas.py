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
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, DataSource

from .errors import BadRequest, validation_details

ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=ID_PATTERN)]


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApprovalIn(_Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    approve: bool


class ChatRequest(_Strict):
    """A customer message (or answers to pending approvals) for one session of one tenant."""

    session_id: Identifier
    message: Annotated[str, StringConstraints(min_length=1, max_length=10_000)] | None = None
    tenant_id: Identifier = "default"
    approvals: Annotated[list[ApprovalIn], Field(max_length=50)] | None = None

    @model_validator(mode="after")
    def _message_or_approvals(self) -> ChatRequest:
        if self.message is None and not self.approvals:
            raise ValueError("message is required unless approvals are given")
        if self.message is not None and not self.message.strip():
            raise ValueError("message must not be blank")
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
    tool_calls: list[ToolCallOut]
    approvals_required: list[ApprovalOut] | None = None


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


M = TypeVar("M", bound=BaseModel)


def json_body(model: type[M]) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Validate the body in one pass (orjson-speed parsing in pydantic), documented by quart-schema."""

    def decorator(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            raw = await request.get_data(as_text=False)
            try:
                data = model.model_validate_json(raw or b"null")
            except ValidationError as exc:
                if any(err["type"] == "json_invalid" for err in exc.errors()):
                    raise BadRequest(
                        "request body is not valid JSON", [{"field": "body", "message": "invalid JSON"}]
                    ) from None
                raise BadRequest("request body is invalid", validation_details(exc)) from None
            return await func(*args, data=data, **kwargs)

        return wrapper

    return decorator


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
