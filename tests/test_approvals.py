"""Confirmation of consequential actions, over JSON and SSE, and the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import MakeModelSettings, order_status
from tests.engines import Engine
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_api import assert_error, sse_events

CANCEL = {"order_id": "ORD-1001", "customer_email": "alice@example.com", "reason": "ordered by mistake"}


async def propose(client: TestClientProtocol, server: ScriptedOpenAI, session: str = "s") -> dict[str, Any]:
    server.push(Reply.call("cancel_order", CANCEL))
    response = await client.post("/api/v1/chat", json={"session_id": session, "message": "cancel ORD-1001"})
    assert response.status_code == 200
    return dict(await response.get_json())


async def test_consequential_call_waits_for_approval(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    body = await propose(model_client, openai_server)
    [approval] = body["approvals_required"]
    assert approval["name"] == "cancel_order" and approval["arguments"] == CANCEL
    assert approval["summary"] == "Cancel order ORD-1001 (reason: ordered by mistake)"
    assert "Please confirm" in body["message"] and approval["summary"] in body["message"]
    assert body["tool_calls"] == []
    assert await order_status(model_app, "ORD-1001") == "pending"
    assert len(openai_server.requests) == 1  # the model was not asked to go on

    history = await (await model_client.get("/api/v1/sessions/s/history")).get_json()
    [pending] = history["metadata"]["pending_approvals"]
    assert pending["id"] == approval["id"] and pending["summary"] == approval["summary"]

    openai_server.push(Reply.say("Your order is cancelled."))
    response = await model_client.post(
        "/api/v1/chat/stream",
        json={"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]},
    )
    events = sse_events(await response.get_data())
    result = next(e for e in events if e["type"] == "tool_result")
    assert result["id"] == approval["id"] and result["ok"] is True and result["name"] == "cancel_order"
    assert events[-1]["type"] == "done" and events[-1]["message"] == "Your order is cancelled."
    assert await order_status(model_app, "ORD-1001") == "cancelled"
    # The model saw the decided call and its result, then worded the outcome.
    sent = openai_server.requests[-1]["messages"]
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "cancel_order"
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == approval["id"]

    history = await (await model_client.get("/api/v1/sessions/s/history")).get_json()
    assert "pending_approvals" not in history["metadata"]
    assert history["messages"][-1]["tool_calls"][0]["decision"] == "approved"

    audit = await (await model_client.get("/api/v1/audit?session_id=s")).get_json()
    kinds = [(e["tool"], e.get("decision"), e["ok"]) for e in audit["events"]]
    assert kinds == [("cancel_order", None, True), ("cancel_order", "approved", None)]
    assert audit["events"][0]["arguments"] == CANCEL


async def test_decline_runs_nothing(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    openai_server.push(Reply.say("Alright, nothing changed."))
    body = await (
        await model_client.post(
            "/api/v1/chat", json={"session_id": "s", "approvals": [{"id": approval["id"], "approve": False}]}
        )
    ).get_json()
    assert body["tool_calls"][0]["ok"] is False
    assert await order_status(model_app, "ORD-1001") == "pending"
    tool_message = openai_server.requests[-1]["messages"][-1]
    assert "declined by the customer" in tool_message["content"]
    audit = await (await model_client.get("/api/v1/audit")).get_json()
    assert [e.get("decision") for e in audit["events"]] == ["declined"]


async def test_double_answer_runs_at_most_once(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    answer = {"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]}
    first, second = await asyncio.gather(
        model_client.post("/api/v1/chat", json=answer), model_client.post("/api/v1/chat", json=answer)
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 400]
    loser = first if first.status_code == 400 else second
    assert_error(await loser.get_json(), "validation_error")
    assert "already answered" in (await loser.get_json())["error"]["message"]
    audit = await (await model_client.get("/api/v1/audit")).get_json()
    assert [e["tool"] for e in audit["events"] if e.get("decision") is None] == ["cancel_order"]


@pytest.mark.parametrize("path", ["/api/v1/chat", "/api/v1/chat/stream"])
async def test_unknown_ids_are_400_and_change_nothing(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI, path: str
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    bad = {
        "session_id": "s",
        "approvals": [{"id": approval["id"], "approve": True}, {"id": "apr_nope", "approve": True}],
    }
    response = await model_client.post(path, json=bad)
    assert response.status_code == 400
    assert_error(await response.get_json(), "validation_error")
    assert await order_status(model_app, "ORD-1001") == "pending"
    history = await (await model_client.get("/api/v1/sessions/s/history")).get_json()
    assert len(history["metadata"]["pending_approvals"]) == 1  # still answerable


async def test_other_tenant_cannot_answer(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    response = await model_client.post(
        "/api/v1/chat",
        json={
            "session_id": "s",
            "tenant_id": "intruder",
            "approvals": [{"id": approval["id"], "approve": True}],
        },
    )
    assert response.status_code == 400
    assert await order_status(model_app, "ORD-1001") == "pending"


async def test_new_message_declines_pending(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    openai_server.push(Reply.say("Sure, what else?"))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "s", "message": "actually, never mind"})
    ).get_json()
    assert body["tool_calls"] == [
        {"id": approval["id"], "name": "cancel_order", "arguments": CANCEL, "ok": False}
    ]
    sent = openai_server.requests[-1]["messages"]
    # The customer's message, then the call it declined (decided because of it), then its result.
    assert sent[-3] == {"role": "user", "content": "actually, never mind"}
    assert sent[-2]["tool_calls"][0]["id"] == approval["id"]
    assert sent[-1]["role"] == "tool" and "declined by the customer" in sent[-1]["content"]
    late = await model_client.post(
        "/api/v1/chat", json={"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]}
    )
    assert late.status_code == 400
    assert await order_status(model_app, "ORD-1001") == "pending"


async def test_expired_approval_is_refused(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = make_model_settings(approval_ttl_seconds=10)
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        approval = (await propose(client, openai_server))["approvals_required"][0]
        found: Services = app.extensions[EXTENSION_KEY]
        session = await found.sessions.get("default", "s")
        assert session is not None
        session.metadata["pending_approvals"][0]["expires"] -= 11  # ten seconds pass
        response = await client.post(
            "/api/v1/chat", json={"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]}
        )
        assert response.status_code == 400
        assert "expired" in (await response.get_json())["error"]["message"]
        assert await order_status(app, "ORD-1001") == "pending"


async def test_several_calls_give_several_approvals(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply.calls(
            ("cancel_order", CANCEL),
            ("get_order", {"order_id": "ORD-1002", "customer_email": "alice@example.com"}),
            (
                "request_return",
                {"order_id": "ORD-1003", "customer_email": "alice@example.com", "reason": "too big"},
            ),
        )
    )
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "m", "message": "do it"})
    ).get_json()
    assert [a["name"] for a in body["approvals_required"]] == ["cancel_order", "request_return"]
    assert [c["name"] for c in body["tool_calls"]] == ["get_order"]  # safe calls run at once
    assert (
        "1. Cancel order ORD-1001" in body["message"]
        and "2. Request a return of order ORD-1003" in body["message"]
    )
    ids = [a["id"] for a in body["approvals_required"]]
    openai_server.push(Reply.say("Done: one cancelled, one kept."))
    answer = {
        "session_id": "m",
        "approvals": [{"id": ids[0], "approve": True}, {"id": ids[1], "approve": False}],
    }
    await model_client.post("/api/v1/chat", json=answer)
    assert await order_status(model_app, "ORD-1001") == "cancelled"
    assert await order_status(model_app, "ORD-1003") == "delivered"


async def test_invalid_arguments_are_refused_not_proposed(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.call("cancel_order", {"order_id": "ORD-1001"}), Reply.say("I need your email."))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "v", "message": "cancel"})
    ).get_json()
    assert "approvals_required" not in body
    assert body["tool_calls"][0]["ok"] is False


async def test_confirmation_off_runs_at_once(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = make_model_settings(require_confirmation=False)
    app = create_app(settings)
    async with app.test_app():
        openai_server.push(Reply.call("cancel_order", CANCEL), Reply.say("Cancelled."))
        body = await (
            await app.test_client().post("/api/v1/chat", json={"session_id": "s", "message": "x"})
        ).get_json()
        assert body["tool_calls"][0]["ok"] is True
        assert await order_status(app, "ORD-1001") == "cancelled"


@pytest.fixture
async def audit_client(
    make_model_settings: MakeModelSettings, engine: Engine
) -> AsyncIterator[TestClientProtocol]:
    """A client of an app whose audit log is on the engine under test (SQLite, then PostgreSQL)."""
    app = create_app(make_model_settings(**await engine.settings_overrides()))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_audit_is_tenant_scoped_paginated_and_scrubbed(
    audit_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    model_client = audit_client
    for i in range(3):
        openai_server.push(Reply.call("get_current_time"), Reply.say("ok"))
        await model_client.post("/api/v1/chat", json={"session_id": f"p{i}", "message": "time"})
    first = await (await model_client.get("/api/v1/audit?limit=2")).get_json()
    assert len(first["events"]) == 2 and first["next_cursor"]
    rest = await (await model_client.get(f"/api/v1/audit?limit=2&cursor={first['next_cursor']}")).get_json()
    assert len(rest["events"]) == 1 and rest["next_cursor"] is None
    assert {e["session_id"] for e in first["events"] + rest["events"]} == {"p0", "p1", "p2"}
    other = await (await model_client.get("/api/v1/audit?tenant_id=other")).get_json()
    assert other["events"] == []  # proposals are not calls; nothing ran for tenant "other"
    bad = await model_client.get("/api/v1/audit?limit=0")
    assert bad.status_code == 400


async def test_audit_never_holds_email_bodies(
    audit_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    model_client = audit_client
    mail = {"to": "alice@example.com", "subject": "Hi", "body": "private words"}
    openai_server.push(Reply.call("send_email", mail))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "e", "message": "mail"})
    ).get_json()
    approval = body["approvals_required"][0]
    openai_server.push(Reply.say("Sent."))
    answer = {"session_id": "e", "approvals": [{"id": approval["id"], "approve": True}]}
    assert (await (await model_client.post("/api/v1/chat", json=answer)).get_json())["tool_calls"][0][
        "ok"
    ] is True
    audit = await (await model_client.get("/api/v1/audit")).get_json()
    assert len(audit["events"]) == 2
    for event in audit["events"]:
        assert event["arguments"] == {"to": "alice@example.com", "subject": "Hi", "body": "[omitted]"}


async def _ws_turn(socket: Any, frame: dict[str, Any]) -> list[dict[str, Any]]:
    await socket.send(orjson.dumps(frame).decode())
    events = []
    while True:
        event = orjson.loads(await socket.receive())
        events.append(event)
        if event["type"] in ("done", "error"):
            return events


async def test_approvals_over_the_websocket(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    async with model_client.websocket("/api/v1/chat/ws") as socket:
        openai_server.push(Reply.call("cancel_order", CANCEL))
        events = await _ws_turn(socket, {"type": "chat", "session_id": "w", "message": "cancel ORD-1001"})
        [approval] = [e for e in events if e["type"] == "approval_required"]
        assert approval["summary"] == "Cancel order ORD-1001 (reason: ordered by mistake)"
        assert events[-1]["type"] == "done" and "Please confirm" in events[-1]["message"]
        assert await order_status(model_app, "ORD-1001") == "pending"

        bad = await _ws_turn(
            socket, {"type": "chat", "session_id": "w", "approvals": [{"id": "nope", "approve": True}]}
        )
        assert bad[-1]["type"] == "error" and bad[-1]["code"] == "validation_error"

        openai_server.push(Reply.say("Cancelled."))
        answer = {"type": "chat", "session_id": "w", "approvals": [{"id": approval["id"], "approve": True}]}
        events = await _ws_turn(socket, answer)
        result = next(e for e in events if e["type"] == "tool_result")
        assert result["ok"] is True and events[-1]["message"] == "Cancelled."
        again = await _ws_turn(socket, answer)
        assert again[-1]["type"] == "error" and "already answered" in again[-1]["error"]
    assert await order_status(model_app, "ORD-1001") == "cancelled"


async def test_pending_approval_survives_a_restart_with_the_sqlite_store(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = make_model_settings(session_store="sqlite")
    first = create_app(settings)
    async with first.test_app():
        approval = (await propose(first.test_client(), openai_server))["approvals_required"][0]
    second = create_app(settings)  # a new process would see exactly these files
    async with second.test_app():
        client = second.test_client()
        history = await (await client.get("/api/v1/sessions/s/history")).get_json()
        assert [p["id"] for p in history["metadata"]["pending_approvals"]] == [approval["id"]]
        openai_server.push(Reply.say("Cancelled after the restart."))
        answer = {"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]}
        body = await (await client.post("/api/v1/chat", json=answer)).get_json()
        assert body["tool_calls"][0]["ok"] is True
        assert await order_status(second, "ORD-1001") == "cancelled"
        audit = await (await client.get("/api/v1/audit")).get_json()
        assert [(e["tool"], e.get("decision")) for e in audit["events"]] == [
            ("cancel_order", None),
            ("cancel_order", "approved"),
        ]


@pytest.mark.parametrize(
    ("name", "arguments", "reason"),
    [
        ("cancel_order", {**CANCEL, "order_id": "ORD-1002"}, "order ORD-1002 is shipped"),
        ("cancel_order", {**CANCEL, "customer_email": "bob@example.com"}, "could not find order ORD-1001"),
        ("request_return", {**CANCEL, "order_id": "ORD-1001"}, "once the order has been delivered"),
        (
            "create_order",
            {
                "customer_email": "bob@example.com",
                "customer_name": "Bob",
                "items": [{"sku": "NOPE-000", "quantity": 1}],
                "shipping_address": "1 Main St, Springfield",
            },
            "there is no product with SKU NOPE-000",
        ),
        ("send_email", {"to": "stranger@evil.example", "subject": "hi", "body": "x"}, "is neither"),
    ],
)
async def test_what_the_rules_refuse_is_refused_at_once(
    model_app: Quart,
    model_client: TestClientProtocol,
    openai_server: ScriptedOpenAI,
    name: str,
    arguments: dict[str, Any],
    reason: str,
) -> None:
    """No approval card for an action that cannot happen: the tool's precheck refuses it now."""
    openai_server.push(Reply.call(name, arguments), Reply.say("Sorry, that is not possible."))
    response = await model_client.post("/api/v1/chat/stream", json={"session_id": "s", "message": "do it"})
    events = sse_events(await response.get_data())
    assert not [e for e in events if e["type"] == "approval_required"]
    [result] = [e for e in events if e["type"] == "tool_result"]
    assert result["name"] == name and result["ok"] is False and reason in result["error"]
    assert events[-1]["type"] == "done" and events[-1]["message"] == "Sorry, that is not possible."
    # The model read the refusal; nothing is pending; every order is as it was.
    assert reason in openai_server.requests[-1]["messages"][-1]["content"]
    history = await (await model_client.get("/api/v1/sessions/s/history")).get_json()
    assert "pending_approvals" not in history["metadata"]
    assert [await order_status(model_app, o) for o in ("ORD-1001", "ORD-1002")] == ["pending", "shipped"]
    audit = await (await model_client.get("/api/v1/audit?session_id=s")).get_json()
    assert [(e["tool"], e["ok"]) for e in audit["events"]] == [(name, False)]


# Typed answers (API.md "Confirmation": the service reads them, never the model) -------------


@pytest.mark.parametrize("typed", ["yes", "  Yes please! ", "OK.", "go ahead", "Confirm", "yes, please"])
async def test_a_typed_yes_approves_exactly_as_approvals(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI, typed: str
) -> None:
    approval = (await propose(model_client, openai_server))["approvals_required"][0]
    assert (
        '"yes"'
        in (await (await model_client.get("/api/v1/sessions/s/history")).get_json())["messages"][-1][
            "content"
        ]
    )  # the request to confirm names the word to type
    openai_server.push(Reply.say("Your order is cancelled."))
    response = await model_client.post("/api/v1/chat/stream", json={"session_id": "s", "message": typed})
    events = sse_events(await response.get_data())
    [call] = [e for e in events if e["type"] == "tool_call"]
    [result] = [e for e in events if e["type"] == "tool_result"]
    assert call["id"] == result["id"] == approval["id"] and call["arguments"] == CANCEL
    assert result["ok"] is True and result["name"] == "cancel_order"
    assert events[-1]["type"] == "done" and events[-1]["message"] == "Your order is cancelled."
    assert await order_status(model_app, "ORD-1001") == "cancelled"
    # The model never judged the answer: it was asked once, after the action ran.
    assert len(openai_server.requests) == 2
    sent = openai_server.requests[-1]["messages"]
    assert sent[-3] == {"role": "user", "content": typed}
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == approval["id"]

    history = await (await model_client.get("/api/v1/sessions/s/history")).get_json()
    assert "pending_approvals" not in history["metadata"]
    assert [m["content"] for m in history["messages"][-2:]] == [typed, "Your order is cancelled."]
    assert history["messages"][-1]["tool_calls"] == [
        {
            "id": approval["id"],
            "name": "cancel_order",
            "arguments": CANCEL,
            "ok": True,
            "decision": "approved",
        }
    ]
    audit = await (await model_client.get("/api/v1/audit?session_id=s")).get_json()
    assert [(e["tool"], e.get("decision"), e["ok"]) for e in audit["events"]] == [
        ("cancel_order", None, True),
        ("cancel_order", "approved", None),
    ]
    late = await model_client.post(
        "/api/v1/chat", json={"session_id": "s", "approvals": [{"id": approval["id"], "approve": True}]}
    )
    assert (
        late.status_code == 400
        and "already answered (approved)" in (await late.get_json())["error"]["message"]
    )


@pytest.mark.parametrize("typed", ["no", "Nope.", "don't", "DO NOT!", "stop", "no thanks"])
async def test_a_typed_no_declines_everything_pending(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI, typed: str
) -> None:
    openai_server.push(
        Reply.calls(
            ("cancel_order", CANCEL),
            ("request_return", {**CANCEL, "order_id": "ORD-1003", "reason": "too big"}),
        )
    )
    await model_client.post("/api/v1/chat", json={"session_id": "n", "message": "cancel and return"})
    openai_server.push(Reply.say("Alright, I left both orders as they are."))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "n", "message": typed})
    ).get_json()
    assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [
        ("cancel_order", False),
        ("request_return", False),
    ]
    assert body["message"] == "Alright, I left both orders as they are."
    tool_messages = [m for m in openai_server.requests[-1]["messages"] if m["role"] == "tool"]
    assert all("declined by the customer" in m["content"] for m in tool_messages[-2:])
    assert [await order_status(model_app, o) for o in ("ORD-1001", "ORD-1003")] == ["pending", "delivered"]
    audit = await (await model_client.get("/api/v1/audit?session_id=n")).get_json()
    assert [e.get("decision") for e in audit["events"]] == ["declined", "declined"]


async def test_a_typed_yes_to_several_actions_runs_each_and_rechecks_the_rules(
    model_app: Quart, model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply.calls(
            ("cancel_order", CANCEL),
            ("request_return", {**CANCEL, "order_id": "ORD-1003", "reason": "too big"}),
        )
    )
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "y", "message": "cancel and return"})
    ).get_json()
    assert 'Reply "yes" to go ahead with all of them or "no" to leave them all.' in body["message"]
    found: Services = model_app.extensions[EXTENSION_KEY]
    assert found.orders is not None
    await found.orders.set_status("default", "ORD-1001", "shipped")  # it shipped while the customer read
    openai_server.push(Reply.say("One done, one not possible."))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "y", "message": "Yes"})
    ).get_json()
    assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [
        ("cancel_order", False),
        ("request_return", True),
    ]
    refusal = next(
        m
        for m in openai_server.requests[-1]["messages"]
        if m.get("tool_call_id") == body["tool_calls"][0]["id"]
    )
    assert "shipped" in refusal["content"]  # the rules ran again when the approved action ran
    assert [await order_status(model_app, o) for o in ("ORD-1001", "ORD-1003")] == [
        "shipped",
        "return_requested",
    ]


async def test_a_typed_yes_does_not_run_an_expired_action(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    app = create_app(make_model_settings(approval_ttl_seconds=10))
    async with app.test_app():
        client = app.test_client()
        await propose(client, openai_server)
        found: Services = app.extensions[EXTENSION_KEY]
        session = await found.sessions.get("default", "s")
        assert session is not None
        session.metadata["pending_approvals"][0]["expires"] -= 11
        openai_server.push(Reply.say("That request expired; shall I ask again?"))
        body = await (
            await client.post("/api/v1/chat", json={"session_id": "s", "message": "yes"})
        ).get_json()
        assert body["tool_calls"][0]["ok"] is False
        assert "expired" in openai_server.requests[-1]["messages"][-1]["content"]
        assert await order_status(app, "ORD-1001") == "pending"
        audit = await (await client.get("/api/v1/audit")).get_json()
        assert [e.get("decision") for e in audit["events"]] == ["expired"]
