"""Fast JSON in and out (orjson), shared by every transport."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from quart import Response


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def dumpb(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: str | bytes) -> Any:
    return orjson.loads(raw)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | float) -> str:
    """ISO-8601 UTC with a `Z`, from a datetime or a Unix timestamp."""
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
