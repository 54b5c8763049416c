"""The JSON codec (orjson) and ISO-8601 timestamps: no web types here, every layer may use it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def dumpb(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: str | bytes) -> Any:
    return orjson.loads(raw)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | float) -> str:
    """ISO-8601 UTC with a `Z`, from a datetime or a Unix timestamp."""
    if isinstance(moment, float | int):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
