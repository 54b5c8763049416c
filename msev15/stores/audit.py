"""Per-tenant audit log of tool calls and approval decisions, in SQLite or PostgreSQL."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol

from msev15.jsonio import dumps, iso, loads
from msev15.stores.database import SqliteDatabase
from msev15.stores.sql import Database


class CallScope(Protocol):
    """Who made a call (the tool layer's ToolContext fits): audit rows are keyed by it."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def user_id(self) -> str | None: ...


class CallOutcome(Protocol):
    """How a call ended (the tool layer's ToolResult fits)."""

    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def duration_ms(self) -> float: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    at REAL NOT NULL,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    ok INTEGER,
    error TEXT,
    duration_ms REAL,
    decision TEXT,
    user_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_tenant_id ON audit_events (tenant_id, id);
CREATE INDEX IF NOT EXISTS audit_tenant_session_id ON audit_events (tenant_id, session_id, id);
"""

# Argument names whose values never reach the audit log: secrets, and message bodies.
_HIDDEN = ("password", "secret", "token", "api_key", "apikey", "authorization", "body")


def scrub(arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments fit for the log: secrets and email bodies replaced by a marker."""
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if any(word in key.lower() for word in _HIDDEN):
            out[key] = "[omitted]"
        elif isinstance(value, dict):
            out[key] = scrub(value)
        else:
            out[key] = value
    return out


class AuditLog:
    """Append-only; every read is filtered by tenant.

    On SQLite it has its own connection to the orders file (its schema here); on PostgreSQL it
    shares the orders' pool and its table comes with the orders' migrations.
    """

    def __init__(self, database: Database, owned: bool) -> None:
        self._database = database
        self._owned = owned

    @classmethod
    async def open(cls, path: Path, busy_timeout_ms: int = 5000) -> AuditLog:
        database = await SqliteDatabase.open(path, busy_timeout_ms)
        try:
            await database.db.executescript(_SCHEMA)
            await _add_user_column(database)
        except BaseException:
            await database.close()
            raise
        return cls(database, owned=True)

    @classmethod
    def on(cls, database: Database) -> AuditLog:
        """The log in an already migrated shared database (PostgreSQL), which its owner closes."""
        return cls(database, owned=False)

    async def close(self) -> None:
        if self._owned:
            await self._database.close()

    async def _insert(self, ctx: CallScope, tool: str, arguments: dict[str, Any], **fields: Any) -> None:
        ok = fields.get("ok")
        async with self._database.reading() as db:
            await db.execute(
                "INSERT INTO audit_events (tenant_id, session_id, request_id, at, tool, arguments, ok, error,"
                " duration_ms, decision, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ctx.tenant_id,
                    ctx.session_id,
                    ctx.request_id,
                    time.time(),
                    tool,
                    dumps(scrub(arguments)),
                    None if ok is None else int(ok),
                    fields.get("error"),
                    fields.get("duration_ms"),
                    fields.get("decision"),
                    ctx.user_id,
                ),
            )

    async def tool_called(
        self, ctx: CallScope, name: str, arguments: dict[str, Any], result: CallOutcome
    ) -> None:
        await self._insert(
            ctx, name, arguments, ok=result.ok, error=result.error, duration_ms=result.duration_ms
        )

    async def decision(self, ctx: CallScope, name: str, arguments: dict[str, Any], decision: str) -> None:
        await self._insert(ctx, name, arguments, decision=decision)

    async def events(
        self,
        tenant_id: str,
        session_id: str | None = None,
        limit: int = 50,
        before: int | None = None,
        user_id: str | None = None,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first; returns the page and the cursor for the next one (None at the end)."""
        sql = "SELECT id, at, session_id, request_id, tool, arguments, ok, error, duration_ms, decision,"
        sql += " user_id FROM audit_events WHERE tenant_id = ?"
        params: list[Any] = [tenant_id]
        if session_id is not None:
            sql += " AND session_id = ?"
            params.append(session_id)
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)
        async with self._database.reading() as db:
            rows = await db.fetchall(sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        events = []
        for row in rows:
            event: dict[str, Any] = {
                "at": iso(row[1]),
                "session_id": row[2],
                "request_id": row[3],
                "tool": row[4],
                "arguments": loads(row[5]),
                "ok": None if row[6] is None else bool(row[6]),
            }
            if row[7] is not None:
                event["error"] = row[7]
            if row[8] is not None:
                event["duration_ms"] = row[8]
            if row[9] is not None:
                event["decision"] = row[9]
            event["user_id"] = row[10]
            events.append(event)
        return events, (rows[-1][0] if more else None)

    async def check(self) -> str:
        return await self._database.check()


async def _add_user_column(database: SqliteDatabase) -> None:
    """Rows written before end users existed keep a NULL user; a worker losing the race goes on."""
    async with database.reading() as db:
        if "user_id" in {row[1] for row in await db.fetchall("PRAGMA table_info(audit_events)")}:
            return
    try:
        await database.db.execute("ALTER TABLE audit_events ADD COLUMN user_id TEXT")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc).lower():
            raise
