"""End users: client and visitor tokens, ownership of conversations, verified email.

Every rule is checked on JSON, SSE and WebSocket with each credential kind: the tenant key,
a client token (with and without a verified email), a visitor token, and open mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from quart import Quart
from quart.typing import TestClientProtocol
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from msev15 import create_app
from msev15.settings import Settings, SettingsError
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI
from tests.servers import serve_on_loopback
from tests.test_api import sse_events
from tests.test_ws import recv, until_end

KEY = "shop-key-123"
KEYS = f"{KEY}:shop,other-key:other"
SECRET = "a-shared-secret-of-the-shop-0123456789"
SHOP = {"Authorization": f"Bearer {KEY}"}
BOB = "bob@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keyed_settings(tmp_path: Path, openai_server: ScriptedOpenAI) -> Settings:
    return make_settings(
        tmp_path,
        api_keys=KEYS,
        client_token_secret=SECRET,
        llm_provider="openai",
        openai_base_url=openai_server.base_url,
        openai_api_key="test-key",
        model_timeout_seconds=2.0,
        session_store="sqlite",  # a second app on the same files sees the same sessions
    )


@pytest.fixture
async def keyed(keyed_settings: Settings) -> AsyncIterator[Quart]:
    app = create_app(keyed_settings)
    async with app.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.fixture
def client(keyed: Quart) -> TestClientProtocol:
    return keyed.test_client()


async def token_for(client: TestClientProtocol, user: str, email: str | None = None) -> str:
    body: dict[str, Any] = {"user_id": user}
    if email is not None:
        body["customer_email"] = email
    response = await client.post("/api/v1/client-tokens", json=body, headers=SHOP)
    assert response.status_code == 201, await response.get_data()
    issued = await response.get_json()
    assert issued["tenant_id"] == "shop" and issued["user_id"] == user
    assert issued["customer_email"] == email and issued["expires_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"
    return str(issued["token"])


async def say(
    client: TestClientProtocol, server: ScriptedOpenAI, headers: dict[str, str], **body: Any
) -> Any:
    server.push(Reply.say("Noted."))
    return await client.post("/api/v1/chat", json={"message": "hello", **body}, headers=headers)


# Minting ----------------------------------------------------------------------------------------


async def test_a_client_token_carries_tenant_user_and_email(client: TestClientProtocol) -> None:
    token = await token_for(client, "cust-1", "Alice@Example.com".lower())
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["tid"] == "shop" and claims["sub"] == "cust-1" and claims["email"] == "alice@example.com"
    assert 86_300 < claims["exp"] - time.time() <= 86_400
    short = await client.post(
        "/api/v1/client-tokens", json={"user_id": "cust-1", "ttl_seconds": 60}, headers=SHOP
    )
    short_claims = jwt.decode((await short.get_json())["token"], SECRET, algorithms=["HS256"])
    assert short_claims["exp"] - time.time() <= 60


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": "bad id"},
        {"user_id": "u", "customer_email": "nope"},
        {"user_id": "u", "ttl_seconds": 5},
    ],
)
async def test_bad_mint_requests_are_400(client: TestClientProtocol, body: dict[str, Any]) -> None:
    response = await client.post("/api/v1/client-tokens", json=body, headers=SHOP)
    assert response.status_code == 400
    assert (await response.get_json())["error"]["type"] == "validation_error"


async def test_only_the_shop_mints_client_tokens(client: TestClientProtocol) -> None:
    assert (await client.post("/api/v1/client-tokens", json={"user_id": "u"})).status_code == 401
    token = await token_for(client, "u")
    refused = await client.post("/api/v1/client-tokens", json={"user_id": "u2"}, headers=bearer(token))
    assert refused.status_code == 403 and (await refused.get_json())["error"]["type"] == "forbidden"
    other = await client.post("/api/v1/client-tokens?tenant_id=other", json={"user_id": "u"}, headers=SHOP)
    assert other.status_code == 403


async def test_visitor_tokens_only_when_public_chat_is_on(tmp_path: Path) -> None:
    """With API_KEYS set public chat is off by default: a 404 whatever is presented."""
    off = create_app(make_settings(tmp_path / "off", api_keys=KEYS, client_token_secret=SECRET))
    async with off.test_app() as running:
        client = running.test_client()
        assert (await client.post("/api/v1/visitor-tokens")).status_code == 404
        assert (await client.post("/api/v1/visitor-tokens", headers=SHOP)).status_code == 404
    on = create_app(
        make_settings(tmp_path / "on", api_keys=KEYS, client_token_secret=SECRET, public_chat=True),
        public_chat_tenant="shop",
    )
    async with on.test_app() as running:
        client = running.test_client()
        first = await client.post("/api/v1/visitor-tokens")
        second = await client.post("/api/v1/visitor-tokens", json={})
        assert first.status_code == second.status_code == 201
        a, b = await first.get_json(), await second.get_json()
        assert a["user_id"].startswith("visitor-") and a["user_id"] != b["user_id"]
        assert a["tenant_id"] == "shop" and a["customer_email"] is None
        assert (await client.post("/api/v1/visitor-tokens", json={"user_id": "me"})).status_code == 400


# Bad tokens -------------------------------------------------------------------------------------


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    return {"tid": "shop", "sub": "u1", "exp": int(time.time()) + 600, **extra}


with warnings.catch_warnings():  # PyJWT warns that our secret is short for HS384/HS512: the point
    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
    _OTHER_ALGORITHMS = {
        "HS512": jwt.encode(_claims(), SECRET, algorithm="HS512"),
        "HS384": jwt.encode(_claims(), SECRET, algorithm="HS384"),
    }

BAD_TOKENS = {
    **_OTHER_ALGORITHMS,
    "alg none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + ".",
    "no exp": jwt.encode({"tid": "shop", "sub": "u1"}, SECRET, algorithm="HS256"),
    "no tid": jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
    "no sub": jwt.encode({"tid": "shop", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
    "empty sub": jwt.encode(_claims(sub=""), SECRET, algorithm="HS256"),
    "expired": jwt.encode(_claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256"),
    "other secret": jwt.encode(_claims(), "another-secret-entirely-0123456789ab", algorithm="HS256"),
    "tampered": jwt.encode(_claims(), SECRET, algorithm="HS256")[:-3] + "AAA",
    "over 4 KiB": jwt.encode(_claims(pad="x" * 4200), SECRET, algorithm="HS256"),
    "garbage": "not.a.token",
    "bad email": jwt.encode(_claims(email=42), SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_are_401_and_never_logged(
    client: TestClientProtocol,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    token = BAD_TOKENS[kind]
    with caplog.at_level(logging.DEBUG):
        for call in (
            client.get("/api/v1/sessions", headers=bearer(token)),
            client.post("/api/v1/chat", json={"session_id": "s", "message": "hi"}, headers=bearer(token)),
            client.post(
                "/api/v1/chat/stream", json={"session_id": "s", "message": "hi"}, headers=bearer(token)
            ),
        ):
            response = await call
            assert response.status_code == 401, kind
            body = await response.get_json()
            assert body["error"]["type"] == "unauthorized" and "token" in body["error"]["message"]
            assert token not in json.dumps(body)
    logged = caplog.text + capsys.readouterr().out
    assert token not in logged
    assert all(part not in logged for part in token.split(".")[1:] if part)


async def test_bad_tokens_are_refused_before_the_socket_opens(keyed_settings: Settings) -> None:
    async with serve_on_loopback(create_app(keyed_settings)) as port:
        for token in (BAD_TOKENS["expired"], BAD_TOKENS["alg none"]):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/api/v1/chat/ws?token={token}"):
                    pass
            assert refused.value.response.status_code == 401


# What a token may reach ---------------------------------------------------------------------


async def test_a_token_fixes_tenant_and_user(
    client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    token = bearer(await token_for(client, "alice"))
    assert (await say(client, openai_server, token, session_id="s", tenant_id="other")).status_code == 403
    assert (await say(client, openai_server, token, session_id="s", user_id="bob")).status_code == 403
    assert (await client.get("/api/v1/sessions?user_id=bob", headers=token)).status_code == 403
    assert (await client.get("/api/v1/sessions?tenant_id=other", headers=token)).status_code == 403
    assert (await client.get("/api/v1/audit", headers=token)).status_code == 403
    ok = await say(client, openai_server, token, session_id="s", tenant_id="shop", user_id="alice")
    assert ok.status_code == 200


async def test_another_users_session_is_not_found_and_unchanged_on_every_transport(
    keyed: Quart, client: TestClientProtocol, openai_server: ScriptedOpenAI, keyed_settings: Settings
) -> None:
    alice = bearer(await token_for(client, "alice"))
    bob_token = await token_for(client, "bob")
    bob = bearer(bob_token)
    assert (await say(client, openai_server, alice, session_id="a-1")).status_code == 200
    asked = len(openai_server.requests)

    assert (await client.get("/api/v1/sessions/a-1/history", headers=bob)).status_code == 404
    assert (await say(client, openai_server, bob, session_id="a-1")).status_code == 404
    stream = await client.post(
        "/api/v1/chat/stream", json={"session_id": "a-1", "message": "mine now"}, headers=bob
    )
    assert stream.status_code == 404 and (await stream.get_json())["error"]["type"] == "not_found"
    assert (await client.delete("/api/v1/sessions/a-1", headers=bob)).status_code == 404
    listing = await (await client.get("/api/v1/sessions", headers=bob)).get_json()
    assert listing["sessions"] == [] and listing["count"] == 0

    app = create_app(keyed_settings)  # the same files, served over real sockets for the WebSocket
    async with serve_on_loopback(app) as port:
        async with connect(f"ws://127.0.0.1:{port}/api/v1/chat/ws?token={bob_token}") as ws:
            await ws.send(json.dumps({"type": "chat", "session_id": "a-1", "message": "hi"}))
            [event] = await until_end(ws)
            assert event["type"] == "error" and event["code"] == "not_found"

    assert len(openai_server.requests) == asked  # the model never saw bob's attempts
    history = await (await client.get("/api/v1/sessions/a-1/history", headers=alice)).get_json()
    assert [m["content"] for m in history["messages"]] == ["hello", "Noted."]
    assert history["user_id"] == "alice"


async def test_the_shop_sees_every_session_and_may_filter_by_user(
    client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    alice = bearer(await token_for(client, "alice"))
    await say(client, openai_server, alice, session_id="a-1")
    await say(client, openai_server, SHOP, session_id="shop-1")
    await say(client, openai_server, SHOP, session_id="for-bob", user_id="bob")
    everything = await (await client.get("/api/v1/sessions", headers=SHOP)).get_json()
    assert {(s["session_id"], s["user_id"]) for s in everything["sessions"]} == {
        ("a-1", "alice"),
        ("shop-1", None),
        ("for-bob", "bob"),
    }
    bobs = await (await client.get("/api/v1/sessions?user_id=bob", headers=SHOP)).get_json()
    assert [s["session_id"] for s in bobs["sessions"]] == ["for-bob"]
    # A session of no user (made tenant-wide, or before owners existed) is the shop's alone.
    assert (await client.get("/api/v1/sessions/shop-1/history", headers=alice)).status_code == 404
    history = await (await client.get("/api/v1/sessions/a-1/history", headers=SHOP)).get_json()
    assert history["user_id"] == "alice"
    audit = await (await client.get("/api/v1/audit", headers=SHOP)).get_json()
    assert audit["events"] == []  # no tool ran; the audit rows of tools are checked below


async def test_a_visitor_continues_only_its_own_conversation(
    tmp_path: Path, openai_server: ScriptedOpenAI
) -> None:
    app = create_app(
        make_settings(
            tmp_path, llm_provider="openai", openai_base_url=openai_server.base_url, openai_api_key="k"
        )
    )
    async with app.test_app() as running:
        client = running.test_client()  # open mode: public chat is on, tokens are still honoured
        one = bearer((await (await client.post("/api/v1/visitor-tokens")).get_json())["token"])
        two = bearer((await (await client.post("/api/v1/visitor-tokens")).get_json())["token"])
        assert (await say(client, openai_server, one, session_id="v")).status_code == 200
        assert (await say(client, openai_server, one, session_id="v")).status_code == 200
        assert (await say(client, openai_server, two, session_id="v")).status_code == 404
        mine = await (await client.get("/api/v1/sessions", headers=one)).get_json()
        assert [s["message_count"] for s in mine["sessions"]] == [4]
        assert (await (await client.get("/api/v1/sessions", headers=two)).get_json())["count"] == 0
        everyone = await (await client.get("/api/v1/sessions")).get_json()  # open mode: tenant-wide
        assert everyone["count"] == 1


# Verified email ---------------------------------------------------------------------------------


async def _tool_result(
    client: TestClientProtocol,
    server: ScriptedOpenAI,
    headers: dict[str, str],
    name: str,
    args: dict[str, Any],
) -> dict[str, Any]:
    server.push(Reply.call(name, args), Reply.say("Done."))
    response = await client.post(
        "/api/v1/chat/stream", json={"session_id": f"s-{name}", "message": "please"}, headers=headers
    )
    events = sse_events(await response.get_data())
    results = [e for e in events if e["type"] in ("tool_result", "approval_required")]
    assert len(results) == 1, events
    return results[0]


@pytest.fixture
async def demo_client(tmp_path: Path, openai_server: ScriptedOpenAI) -> AsyncIterator[TestClientProtocol]:
    """The demo shop (tenant `default`) behind keys, with a verified Alice."""
    app = create_app(
        make_settings(
            tmp_path,
            api_keys=f"{KEY}:default",
            client_token_secret=SECRET,
            llm_provider="openai",
            openai_base_url=openai_server.base_url,
            openai_api_key="k",
        )
    )
    async with app.test_app() as running:
        yield running.test_client()


async def test_a_verified_email_is_the_only_email_the_tools_act_for(
    demo_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    minted = await demo_client.post(
        "/api/v1/client-tokens",
        json={"user_id": "alice", "customer_email": "alice@example.com"},
        headers=SHOP,
    )
    alice = bearer((await minted.get_json())["token"])
    own = await _tool_result(demo_client, openai_server, alice, "get_order", {"order_id": "ORD-1001"})
    assert own["ok"] is True and json.loads(own["content"])["customer_email"] == "alice@example.com"
    # Bob's order with Bob's email, as a model might be talked into: it reads as absent.
    foreign = await _tool_result(
        demo_client,
        openai_server,
        alice,
        "get_order",
        {"order_id": "ORD-1004", "customer_email": BOB},
    )
    absent = await _tool_result(demo_client, openai_server, alice, "get_order", {"order_id": "ORD-9999"})
    assert foreign["ok"] is False and foreign["error"] == "I could not find order ORD-1004 for that email"
    assert absent["error"] == "I could not find order ORD-9999 for that email"
    listed = await _tool_result(
        demo_client, openai_server, alice, "find_customer_orders", {"customer_email": BOB}
    )
    assert json.loads(listed["content"])["count"] == 0
    cancel = await _tool_result(
        demo_client,
        openai_server,
        alice,
        "cancel_order",
        {"order_id": "ORD-1004", "customer_email": BOB},
    )
    assert cancel["type"] == "tool_result" and cancel["ok"] is False  # refused at once, no approval card
    mail = await _tool_result(
        demo_client,
        openai_server,
        alice,
        "send_email",
        {"to": BOB, "subject": "hi", "body": "x"},
    )
    assert mail["ok"] is False and "your own verified address" in mail["error"]
    buy = await _tool_result(
        demo_client,
        openai_server,
        alice,
        "create_order",
        {
            "customer_email": "bob@example.com",
            "customer_name": "Bob",
            "items": [{"sku": "HDP-NC100", "quantity": 1}],
            "shipping_address": "1 Main St, Springfield",
        },
    )
    assert buy["ok"] is False and "verified email" in buy["error"]
    own_cancel = await _tool_result(
        demo_client, openai_server, alice, "cancel_order", {"order_id": "ORD-1001"}
    )
    assert own_cancel["type"] == "approval_required"  # her own order, email left out: proposed

    audit = await (await demo_client.get("/api/v1/audit", headers=SHOP)).get_json()
    assert {e["user_id"] for e in audit["events"]} == {"alice"}


async def test_without_a_verified_email_the_model_must_name_one(
    demo_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    minted = await demo_client.post("/api/v1/client-tokens", json={"user_id": "anon"}, headers=SHOP)
    anon = bearer((await minted.get_json())["token"])
    result = await _tool_result(demo_client, openai_server, anon, "get_order", {"order_id": "ORD-1001"})
    assert result["ok"] is False and "need the email address" in result["error"]


# The secret -------------------------------------------------------------------------------------


async def test_an_unset_secret_is_made_once_per_host_and_shared(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    apps = [create_app(settings) for _ in range(3)]
    async with apps[0].test_app(), apps[1].test_app(), apps[2].test_app():
        secrets = {app.extensions[EXTENSION_KEY].token_secret for app in apps}
    assert len(secrets) == 1
    path = tmp_path / "client_token_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip().encode() == secrets.pop()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".client_token")] == []  # no temp file left
    again = create_app(settings)
    async with again.test_app():
        found: Services = again.extensions[EXTENSION_KEY]
        assert found.token_secret == path.read_text().strip().encode()


def test_a_short_secret_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CLIENT_TOKEN_SECRET"):
        make_settings(tmp_path, client_token_secret="short")


# Headers and handshakes -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_page_and_docs_send_security_headers(tmp_path: Path, path: str) -> None:
    app = create_app(make_settings(tmp_path, frame_ancestors="'self' https://shop.example"))
    async with app.test_app() as running:
        response = await running.test_client().get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'self' https://shop.example" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in (await response.get_data(as_text=True)).replace('<script type="module" src', "")


async def test_websocket_origin_must_be_the_services_own_or_named(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins="https://shop.example")
    async with serve_on_loopback(create_app(settings)) as port:
        url = f"ws://127.0.0.1:{port}/api/v1/chat/ws"
        for origin in (f"http://127.0.0.1:{port}", "https://shop.example", None):
            async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"type": "ping"}))
                assert (await recv(ws))["type"] == "pong"
        for origin in ("https://evil.example", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, origin=origin):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
    star = make_settings(tmp_path / "star", cors_origins="*")
    async with serve_on_loopback(create_app(star)) as port:
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://127.0.0.1:{port}/api/v1/chat/ws", origin="https://evil.example"):  # type: ignore[arg-type]
                pass


async def _refused(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, body_later: bool
) -> tuple[int, bool]:
    """One refused POST on an open connection: its status, and whether the server said to reconnect."""
    head = (
        b"POST /api/v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer wrong\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    writer.write(head if body_later else head + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    fields = dict(line.split(b": ", 1) for line in answer.lower().split(b"\r\n")[1:] if b": " in line)
    await reader.readexactly(int(fields[b"content-length"]))
    if body_later:  # a client that holds its body back until it sees the answer
        writer.write(body)
        await writer.drain()
    return int(answer.split(b" ", 2)[1]), fields.get(b"connection") == b"close"


async def test_refusals_keep_a_keep_alive_connection_usable(tmp_path: Path) -> None:
    """An early 401 (before the body is read) never leaves a reused connection dead: 180 refusals
    on one connection are all answered; a client that holds its body back is told to reconnect."""
    settings = make_settings(tmp_path, api_keys=KEYS, enable_rate_limiting=False)
    body = json.dumps({"session_id": "s", "message": "x" * 60_000}).encode()
    async with serve_on_loopback(create_app(settings)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            answers = [await _refused(reader, writer, body, body_later=False) for _ in range(180)]
            assert answers == [(401, False)] * 180
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await _refused(reader, writer, body, body_later=True) == (401, True)
        finally:
            writer.close()


async def test_resume_and_stop_follow_the_ownership_of_history(
    keyed_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    """Another user's answer cannot be resumed or stopped; its owner and the shop can."""
    app = create_app(keyed_settings)
    async with serve_on_loopback(app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def mint(user: str) -> dict[str, str]:
                minted = await http.post("/api/v1/client-tokens", json={"user_id": user}, headers=SHOP)
                return bearer(minted.json()["token"])

            alice, bob = await mint("alice"), await mint("bob")
            openai_server.push(Reply.say(" ".join(f"w{i}" for i in range(40)), delay=0.02))
            body = {"session_id": "alice-1", "message": "tell me"}
            async with http.stream("POST", "/api/v1/chat/stream", json=body, headers=alice) as started:
                async for line in started.aiter_lines():
                    if line.startswith("id: "):
                        position = line[4:]
                        break
            for path in (
                "/api/v1/sessions/alice-1/stream",
                "/api/v1/sessions/alice-1/stream?after=" + position,
            ):
                assert (await http.get(path, headers=bob)).status_code == 404
            assert (await http.post("/api/v1/sessions/alice-1/stop", headers=bob)).status_code == 404
            async with connect(
                f"ws://127.0.0.1:{port}/api/v1/chat/ws?token={bob['Authorization'][7:]}"
            ) as ws:
                turn_id = position.split(":")[0]
                await ws.send(json.dumps({"type": "resume", "session_id": "alice-1", "turn_id": turn_id}))
                [refused] = await until_end(ws)
                assert refused["type"] == "error" and refused["code"] == "not_found"
            shop_view = await http.get(
                "/api/v1/sessions/alice-1/stream", headers={**SHOP, "Last-Event-ID": position}
            )
            assert shop_view.status_code == 200
            stopped = await http.post("/api/v1/sessions/alice-1/stop", headers=alice)
            assert stopped.status_code == 200 and stopped.json()["session_id"] == "alice-1"
            own = await http.get(
                "/api/v1/sessions/alice-1/stream", headers={**alice, "Last-Event-ID": position}
            )
            assert own.status_code == 200 and '"type":"done"' in own.text
