"""Tenants behind API keys, rate limits, client addresses, and a model that tries to cross boundaries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import MakeModelSettings, make_settings, order_status
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_api import assert_error

KEYS = "key-a:tenant-a,key-b:tenant-b"
A = {"Authorization": "Bearer key-a"}
B = {"X-API-Key": "key-b"}


@pytest.fixture
async def keyed(make_model_settings: MakeModelSettings) -> AsyncIterator[Quart]:
    app = create_app(make_model_settings(api_keys=KEYS))
    async with app.test_app():
        yield app


async def test_missing_or_wrong_key_is_401(keyed: Quart) -> None:
    client = keyed.test_client()
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "KEY-A"},
        {"Authorization": "key-a"},
    ):
        for method, path, body in (
            ("POST", "/api/v1/chat", {"session_id": "s", "message": "hi"}),
            ("POST", "/api/v1/chat/stream", {"session_id": "s", "message": "hi"}),
            ("GET", "/api/v1/sessions", None),
            ("GET", "/api/v1/sessions/s/history", None),
            ("DELETE", "/api/v1/sessions/s", None),
            ("GET", "/api/v1/audit", None),
        ):
            response = await client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 401, (headers, path)
            assert_error(await response.get_json(), "unauthorized")
    assert (await client.get("/health")).status_code == 200  # health needs no key


async def test_key_selects_tenant_and_other_tenants_are_403(keyed: Quart) -> None:
    client = keyed.test_client()
    made = await client.post("/api/v1/chat", json={"session_id": "s", "message": "hi"}, headers=A)
    assert (await made.get_json())["tenant_id"] == "tenant-a"
    explicit = await client.post(
        "/api/v1/chat", json={"session_id": "s", "message": "x", "tenant_id": "tenant-a"}, headers=A
    )
    assert explicit.status_code == 200

    for method, path, body in (
        ("POST", "/api/v1/chat", {"session_id": "s", "message": "hi", "tenant_id": "tenant-a"}),
        ("POST", "/api/v1/chat/stream", {"session_id": "s", "message": "hi", "tenant_id": "tenant-a"}),
        ("GET", "/api/v1/sessions?tenant_id=tenant-a", None),
        ("GET", "/api/v1/sessions/s/history?tenant_id=tenant-a", None),
        ("DELETE", "/api/v1/sessions/s?tenant_id=tenant-a", None),
        ("GET", "/api/v1/audit?tenant_id=tenant-a", None),
    ):
        response = await client.open(path, method=method, json=body, headers=B)
        assert response.status_code == 403, path
        assert_error(await response.get_json(), "forbidden")

    # Key B sees only its own tenant: tenant-a's session does not exist for it.
    assert (await client.get("/api/v1/sessions/s/history", headers=B)).status_code == 404
    assert (await (await client.get("/api/v1/sessions", headers=B)).get_json())["count"] == 0
    history = await (await client.get("/api/v1/sessions/s/history", headers=A)).get_json()
    assert len(history["messages"]) == 4


async def test_burst_over_limit_gets_429_while_another_ip_is_served(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, enable_rate_limiting=True, rate_limit_per_minute=5))
    async with app.test_app():
        client = app.test_client()
        one: dict[str, Any] = {"client": ("203.0.113.7", 5000)}
        other: dict[str, Any] = {"client": ("198.51.100.9", 5000)}
        codes = [(await client.get("/api/v1/sessions", scope_base=one)).status_code for _ in range(5)]
        assert codes == [200] * 5
        limited = await client.post("/api/v1/chat", json={"session_id": "s", "message": "hi"}, scope_base=one)
        assert limited.status_code == 429
        assert_error(await limited.get_json(), "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert (await client.get("/api/v1/sessions", scope_base=other)).status_code == 200
        for path in ("/health", "/health/readiness", "/", "/openapi.json"):  # exempt
            assert (await client.get(path, scope_base=one)).status_code == 200, path
        listing = await (await client.get("/api/v1/sessions", scope_base=other)).get_json()
        assert listing["count"] == 0  # the refused chat stored nothing


async def test_forwarded_for_believed_only_from_trusted_proxies(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, enable_rate_limiting=True, rate_limit_per_minute=2, trusted_proxies="10.0.0.1"
    )
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        proxy: dict[str, Any] = {"client": ("10.0.0.1", 1)}
        stranger: dict[str, Any] = {"client": ("192.0.2.1", 1)}

        async def get(scope: dict[str, Any], forwarded: str) -> int:
            response = await client.get(
                "/api/v1/sessions", scope_base=scope, headers={"X-Forwarded-For": forwarded}
            )
            return response.status_code

        # Through the proxy, each forwarded client has its own budget.
        assert [await get(proxy, "1.1.1.1") for _ in range(3)] == [200, 200, 429]
        assert await get(proxy, "2.2.2.2") == 200
        # A direct client cannot pick a fresh address by sending the header.
        assert [await get(stranger, f"9.9.9.{i}") for i in range(3)] == [200, 200, 429]


@pytest.fixture
async def unconfirmed(make_model_settings: MakeModelSettings) -> AsyncIterator[Quart]:
    """Confirmation off, so the tools themselves must refuse what the model attempts."""
    app = create_app(make_model_settings(require_confirmation=False))
    async with app.test_app():
        yield app


async def _attempt(
    app: Quart, server: ScriptedOpenAI, tenant: str, name: str, args: dict[str, Any]
) -> dict[str, Any]:
    server.push(Reply.call(name, args), Reply.say("Sorry."))
    client: TestClientProtocol = app.test_client()
    body = await (
        await client.post("/api/v1/chat", json={"session_id": "x", "message": "do it", "tenant_id": tenant})
    ).get_json()
    [call] = body["tool_calls"]
    assert call["ok"] is False
    return dict(server.requests[-1]["messages"][-1])


async def test_model_cannot_touch_another_tenants_order(
    unconfirmed: Quart, openai_server: ScriptedOpenAI
) -> None:
    args = {"order_id": "ORD-1001", "customer_email": "alice@example.com", "reason": "x"}
    await _attempt(unconfirmed, openai_server, "evil-shop", "cancel_order", args)
    await _attempt(
        unconfirmed,
        openai_server,
        "evil-shop",
        "get_order",
        {k: args[k] for k in ("order_id", "customer_email")},
    )
    assert await order_status(unconfirmed, "ORD-1001") == "pending"


async def test_model_cannot_touch_another_customers_order(
    unconfirmed: Quart, openai_server: ScriptedOpenAI
) -> None:
    args = {"order_id": "ORD-1001", "customer_email": "bob@example.com", "reason": "x"}
    await _attempt(unconfirmed, openai_server, "default", "cancel_order", args)
    address = {"order_id": "ORD-1001", "customer_email": "bob@example.com", "shipping_address": "1 Evil Rd"}
    await _attempt(unconfirmed, openai_server, "default", "update_shipping_address", address)
    assert await order_status(unconfirmed, "ORD-1001") == "pending"


async def test_model_cannot_email_a_stranger(unconfirmed: Quart, openai_server: ScriptedOpenAI) -> None:
    mail = {"to": "stranger@elsewhere.example", "subject": "Hi", "body": "spam"}
    seen = await _attempt(unconfirmed, openai_server, "default", "send_email", mail)
    assert "stranger@elsewhere.example" in seen["content"] or "not" in seen["content"]
    found: Services = unconfirmed.extensions[EXTENSION_KEY]
    assert found.orders is not None
    async with found.orders.reading() as db:
        row = await db.fetchone("SELECT count(*) FROM outbox")
    assert row is not None and row[0] == 0


async def test_model_cannot_smuggle_a_tenant_argument(
    unconfirmed: Quart, openai_server: ScriptedOpenAI
) -> None:
    args = {"order_id": "ORD-1001", "customer_email": "alice@example.com", "tenant_id": "default"}
    seen = await _attempt(unconfirmed, openai_server, "evil-shop", "get_order", args)
    assert "tenant_id" in seen["content"]  # refused as an unknown argument, not honoured


async def test_websocket_chat_frames_share_the_rate_limit(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, enable_rate_limiting=True, rate_limit_per_minute=3))
    async with app.test_app():
        client = app.test_client()
        peer: dict[str, Any] = {"client": ("203.0.113.50", 4000)}
        assert (await client.get("/api/v1/sessions", scope_base=peer)).status_code == 200
        async with client.websocket("/api/v1/chat/ws", scope_base=peer) as socket:
            ends = []
            for i in range(3):
                await socket.send(
                    orjson.dumps({"type": "chat", "session_id": "w", "message": f"hi {i}"}).decode()
                )
                while True:
                    event = orjson.loads(await socket.receive())
                    if event["type"] in ("done", "error"):
                        ends.append(event.get("code", "done"))
                        break
            assert ends == ["done", "done", "rate_limited"]  # one HTTP request + two frames used the budget
            await socket.send('{"type": "ping"}')
            assert orjson.loads(await socket.receive()) == {"type": "pong"}  # the socket stays open
        assert (await client.get("/api/v1/sessions", scope_base=peer)).status_code == 429
