"""JSON-lines logging with request context, and the start banner."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from msev15.settings import Settings
from msev15.tracing import current_ids

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("session_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
client_ip_var: ContextVar[str | None] = ContextVar("client_ip", default=None)

_CONTEXT = (
    ("request_id", request_id_var),
    ("session_id", session_id_var),
    ("tenant_id", tenant_id_var),
    ("client_ip", client_ip_var),
)
_HANDLER_MARK = "_msev15_handler"


# Hypercorn's access-log atoms worth a field of their own (the atoms also hold every environment
# variable and request header, so they are never logged wholesale).
_ACCESS_FIELDS = (("client", "h"), ("method", "m"), ("path", "U"), ("query", "q"), ("protocol", "H"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, module, message, context, and any `extra` fields.

    Hypercorn's access log (`hypercorn.toml` routes it here) also gets `status`, `duration_ms`,
    `bytes` and the response's `request_id` as fields.
    """

    _RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "module": record.name,
            "message": record.getMessage(),
        }
        for name, var in _CONTEXT:
            value = var.get()
            if value is not None:
                entry[name] = value
        ids = current_ids()  # None at once while tracing is off
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.name == "hypercorn.access" and isinstance(record.args, Mapping):
            entry.update(_access_fields(record.args))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: atoms[key] for name, key in _ACCESS_FIELDS if atoms.get(key)}
    if str(atoms.get("s", "")).isdigit():
        fields["status"] = int(atoms["s"])
    if atoms.get("b") not in (None, "-"):
        fields["bytes"] = atoms["b"]
    try:
        fields["duration_ms"] = round(float(atoms["L"]) * 1000, 3)
    except (KeyError, TypeError, ValueError):
        pass
    if atoms.get("{x-request-id}o"):
        fields["request_id"] = atoms["{x-request-id}o"]
    return fields


def configure_logging(settings: Settings) -> None:
    """Install the JSON handlers once per process (re-configuring replaces ours, not others')."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if settings.log_to_file:
        settings.log_file_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                settings.log_file_path,
                maxBytes=settings.log_max_size_mb * 1024 * 1024,
                backupCount=settings.log_backup_count,
                encoding="utf-8",
            )
        )
    _install(handlers, settings.log_level)


def configure_stream_logging(level: str, stream: TextIO = sys.stdout) -> None:
    """The same JSON lines on one stream only (the bundled MCP server: stdout, or stderr under stdio)."""
    _install([logging.StreamHandler(stream)], level)


def _install(handlers: list[logging.Handler], level: str | int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter()
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (per-request HTTP client lines) stays below INFO.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "mcp", "hpack", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def banner(settings: Settings, version: str, parts: dict[str, str]) -> None:
    """The start banner: what runs, with secrets masked."""
    log = logging.getLogger("msev15")
    log.info(
        "MSEv15E2E %s starting",
        version,
        extra={"banner": {"version": version, **parts}, "settings": settings.masked()},
    )
