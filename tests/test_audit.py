"""The audit log itself, on SQLite and on PostgreSQL: appends, tenant scope, filters, pages, scrubbing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from msev15.stores.audit import AuditLog
from msev15.stores.orders import OrderRepository
from tests.engines import Engine


@dataclass(frozen=True)
class Scope:
    tenant_id: str
    session_id: str
    request_id: str = "r1"
    user_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    duration_ms: float = 1.5


@pytest.fixture
async def audit(engine: Engine) -> AsyncIterator[AuditLog]:
    repo: OrderRepository = await engine.open(seed=False)
    log = await engine.audit(repo)
    yield log
    await log.close()
    await repo.close()


async def test_calls_and_decisions_read_back_newest_first_with_their_fields(audit: AuditLog) -> None:
    await audit.tool_called(
        Scope("t", "s1", user_id="alice"), "get_order", {"order_id": "ORD-1"}, Outcome(True)
    )
    await audit.tool_called(Scope("t", "s1"), "cancel_order", {"order_id": "ORD-1"}, Outcome(False, "no"))
    await audit.decision(Scope("t", "s1"), "cancel_order", {"order_id": "ORD-1"}, "rejected")
    events, cursor = await audit.events("t")
    assert cursor is None
    assert [(e["tool"], e["ok"], e.get("decision")) for e in events] == [
        ("cancel_order", None, "rejected"),
        ("cancel_order", False, None),
        ("get_order", True, None),
    ]
    assert events[1]["error"] == "no" and events[2]["duration_ms"] == 1.5
    assert events[2]["user_id"] == "alice" and events[0]["user_id"] is None
    assert events[2]["arguments"] == {"order_id": "ORD-1"} and events[2]["at"].endswith("Z")
    assert await audit.check() == "ok"


async def test_reads_are_tenant_scoped_filtered_and_paged(audit: AuditLog) -> None:
    for i in range(5):
        await audit.tool_called(Scope("a", f"s{i % 2}", user_id=f"u{i % 2}"), "t", {"i": i}, Outcome(True))
    await audit.tool_called(Scope("b", "s0"), "t", {"i": 99}, Outcome(True))
    first, cursor = await audit.events("a", limit=3)
    assert [e["arguments"]["i"] for e in first] == [4, 3, 2] and cursor is not None
    rest, end = await audit.events("a", limit=3, before=cursor)
    assert [e["arguments"]["i"] for e in rest] == [1, 0] and end is None
    assert [e["arguments"]["i"] for e in (await audit.events("a", session_id="s1"))[0]] == [3, 1]
    assert [e["arguments"]["i"] for e in (await audit.events("a", user_id="u0"))[0]] == [4, 2, 0]
    assert [e["arguments"]["i"] for e in (await audit.events("b"))[0]] == [99]
    assert (await audit.events("c"))[0] == []


async def test_secrets_and_bodies_never_reach_the_log(audit: AuditLog) -> None:
    arguments = {"to": "x@example.com", "body": "private", "api_key": "k", "nested": {"password": "p"}}
    await audit.tool_called(Scope("t", "s"), "send_email", arguments, Outcome(True))
    [event], _ = await audit.events("t")
    assert event["arguments"] == {
        "to": "x@example.com",
        "body": "[omitted]",
        "api_key": "[omitted]",
        "nested": {"password": "[omitted]"},
    }
