"""The AppError tree and the one renderer of API.md's error shape."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError
from quart import Quart, Response, g
from quart_rate_limiter import RateLimitExceeded
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from msev15.stores.sessions import SessionStoreUnavailable

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error with an HTTP status and an API.md `error.type`."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}


class BadRequest(AppError):
    status, code = 400, "validation_error"


class Unauthorized(AppError):
    status, code = 401, "unauthorized"


class Forbidden(AppError):
    status, code = 403, "forbidden"


class NotFound(AppError):
    status, code = 404, "not_found"


class MethodNotAllowed(AppError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(AppError):
    status, code = 413, "payload_too_large"


class RateLimited(AppError):
    status, code = 429, "rate_limited"


class Unavailable(AppError):
    status, code = 503, "unavailable"


_HTTP_CODES: dict[int, type[AppError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


class FieldError(ValueError):
    """Raised by a model-level validator about one of its fields, so the details name that field.

    A plain ValueError from a model validator has no location, and its detail would name only
    the whole body; this one says which field the client must fix.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as the API's `{"field", "message"}` list (dotted paths; `body` for the whole)."""
    details = []
    for err in exc.errors(include_url=False):
        where = [str(p) for p in err["loc"]]
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            where.append(cause.field)
            message = str(cause)
        details.append({"field": ".".join(where) or "body", "message": message})
    return details


def rate_limited(exc: RateLimitExceeded) -> RateLimited:
    """The 429 of a refused request or WebSocket frame, with whole seconds to wait (at least 1)."""
    seconds = str(max(1, exc.retry_after if isinstance(exc.retry_after, int) else 1))
    return RateLimited(f"too many requests; retry in {seconds} s", headers={"Retry-After": seconds})


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {
        "error": {"type": code, "message": message, "details": details or []},
        "request_id": g.get("request_id", ""),
    }


def render(error: AppError) -> Response:
    response = json_response(error_body(error.code, error.message, error.details), error.status)
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Quart) -> None:
    """Every failure, whatever raised it, leaves as the one JSON shape."""

    @app.errorhandler(AppError)
    async def _app_error(error: AppError) -> Response:
        return render(error)

    @app.errorhandler(SessionStoreUnavailable)
    async def _sessions_down(error: SessionStoreUnavailable) -> Response:
        log.warning("session store unavailable: %s", error)
        return render(Unavailable(str(error)))

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(error: RequestSchemaValidationError) -> Response:
        inner = error.validation_error
        if isinstance(inner, ValidationError):
            return render(BadRequest("request body is invalid", validation_details(inner)))
        return render(BadRequest("request body is invalid", [{"field": "body", "message": str(inner)}]))

    @app.errorhandler(RateLimitExceeded)
    async def _rate_limited(error: RateLimitExceeded) -> Response:
        return render(rate_limited(error))

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        cls = _HTTP_CODES.get(status)
        if cls is None:
            return render(AppError("internal error"))
        message = {
            400: "request body is not valid JSON",
            404: "no such resource",
            405: "method not allowed for this resource",
            413: "request body is too large",
        }.get(status, error.description or error.name)
        details = [{"field": "body", "message": message}] if status == 400 else []
        rendered = render(cls(message, details))
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            rendered.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return rendered

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return render(AppError("internal error"))
