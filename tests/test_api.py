"""The HTTP contract of API.md: chat, SSE, sessions, health, and every error shape."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.stores.sessions import MemorySessionStore
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Parse an SSE body into its JSON events (keep-alive comments skipped); each event's `id:`
    line must be its resume position."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and line[0] != ":")
        if "data" in lines:
            event = orjson.loads(lines["data"])
            assert lines["id"] == f"{event['turn_id']}:{event['seq']}", block
            events.append(event)
    return events


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error", "request_id"}
    assert body["error"]["type"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    assert body["request_id"]


async def test_chat_json_round_trip(model_client: TestClientProtocol) -> None:
    response = await model_client.post("/api/v1/chat", json={"session_id": "s1", "message": "hello"})
    assert response.status_code == 200
    body = await response.get_json()
    assert body["message"] == "Echo: hello"
    assert body["session_id"] == "s1" and body["tenant_id"] == "default"
    assert body["message_count"] == 2
    assert body["tool_calls"] == []
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["timestamp"].endswith("Z")


async def test_sse_stream_events_end_with_done(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say("one two three four", delay=0.01))
    response = await model_client.post("/api/v1/chat/stream", json={"session_id": "s1", "message": "count"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    events = sse_events(await response.get_data())
    assert [e["type"] for e in events][-1] == "done"
    assert sum(e["type"] in ("done", "error") for e in events) == 1
    tokens = "".join(e["content"] for e in events if e["type"] == "token")
    assert tokens == "one two three four"
    done = events[-1]
    assert done["message"] == tokens and done["message_count"] == 2
    assert all(e["session_id"] == "s1" and e["tenant_id"] == "default" for e in events)


async def test_tool_call_flow_and_history(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.call("get_current_time"), Reply.say("It is late."))
    response = await model_client.post(
        "/api/v1/chat/stream", json={"session_id": "t", "message": "what time?"}
    )
    events = sse_events(await response.get_data())
    types = [e["type"] for e in events]
    assert types.index("tool_call") < types.index("tool_result") < types.index("done")
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert call["name"] == result["name"] == "get_current_time" and call["arguments"] == {}
    assert result["ok"] is True and "utc" in orjson.loads(result["content"]) and "error" not in result
    # The model saw the tool's result in its second request.
    second = openai_server.requests[1]["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["tool_call_id"] == call["id"]
    assert any(t["function"]["name"] == "get_current_time" for t in openai_server.requests[0]["tools"])

    history = await (await model_client.get("/api/v1/sessions/t/history")).get_json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][1]["content"] == "It is late."
    assert history["messages"][1]["tool_calls"][0]["name"] == "get_current_time"
    assert history["metadata"] == {}


async def test_several_tool_calls_in_one_round(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply.calls(("get_current_time", {}), ("no_such_tool", {"x": 1}), ("get_current_time", "{not json")),
        Reply.say("Done."),
    )
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "m", "message": "go"})
    ).get_json()
    assert [c["ok"] for c in body["tool_calls"]] == [True, False, False]
    tool_messages = [m for m in openai_server.requests[1]["messages"] if m["role"] == "tool"]
    assert "no tool called" in tool_messages[1]["content"]
    assert "not valid JSON" in tool_messages[2]["content"]


async def test_history_is_sent_to_the_model(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    await model_client.post("/api/v1/chat", json={"session_id": "h", "message": "first"})
    await model_client.post("/api/v1/chat", json={"session_id": "h", "message": "second"})
    messages = openai_server.requests[-1]["messages"]
    assert messages[0]["role"] == "system"
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "first"),
        ("assistant", "Echo: first"),
        ("user", "second"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "hi"}, "session_id"),
        ({"session_id": "s"}, "body"),
        ({"session_id": "s", "message": ""}, "message"),
        ({"session_id": "s", "message": "x" * 10_001}, "message"),
        ({"session_id": "bad id!", "message": "hi"}, "session_id"),
        ({"session_id": "s" * 256, "message": "hi"}, "session_id"),
        ({"session_id": "s", "message": "hi", "tenant_id": "a/b"}, "tenant_id"),
        ({"session_id": "s", "message": "hi", "extra": 1}, "extra"),
        ({"session_id": 5, "message": "hi"}, "session_id"),
        ([1, 2], "body"),
    ],
)
async def test_chat_validation_errors(client: TestClientProtocol, body: Any, field: str) -> None:
    for path in ("/api/v1/chat", "/api/v1/chat/stream"):
        response = await client.post(path, json=body)
        assert response.status_code == 400
        payload = await response.get_json()
        assert_error(payload, "validation_error")
        fields = [d["field"] for d in payload["error"]["details"]]
        assert any(f.startswith(field) for f in fields) or field == "body", fields
    listing = await (await client.get("/api/v1/sessions")).get_json()
    assert listing["count"] == 0  # nothing was stored


async def test_invalid_json_and_wrong_content(client: TestClientProtocol) -> None:
    for data in (b"{not json", b"", b"null"):
        response = await client.post("/api/v1/chat", data=data, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert_error(await response.get_json(), "validation_error")


async def test_unknown_route_and_wrong_method(client: TestClientProtocol) -> None:
    response = await client.get("/api/v1/nope")
    assert response.status_code == 404
    assert_error(await response.get_json(), "not_found")
    assert response.headers["X-Request-ID"]
    response = await client.get("/api/v1/chat")
    assert response.status_code == 405
    assert_error(await response.get_json(), "method_not_allowed")
    assert "POST" in response.headers["Allow"]


async def test_body_too_large(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, max_request_bytes=2048))
    async with app.test_app():
        client = app.test_client()
        response = await client.post("/api/v1/chat", json={"session_id": "s", "message": "x" * 5000})
        assert response.status_code == 413
        assert_error(await response.get_json(), "payload_too_large")


async def test_internal_error_hides_details(tmp_path: Path) -> None:
    class BrokenStore(MemorySessionStore):
        async def list(self, tenant_id: str) -> list[Any]:
            raise RuntimeError("secret database password is hunter2")

    app = create_app(make_settings(tmp_path), sessions=BrokenStore())
    async with app.test_app():
        response = await app.test_client().get("/api/v1/sessions")
        assert response.status_code == 500
        body = await response.get_json()
        assert_error(body, "internal_error")
        assert "hunter2" not in orjson.dumps(body).decode()


async def test_model_unavailable_is_503(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.error(500, times=-1))
    response = await model_client.post("/api/v1/chat", json={"session_id": "u", "message": "hi"})
    assert response.status_code == 503
    assert_error(await response.get_json(), "unavailable")
    assert len(openai_server.requests) == 3  # first try + MODEL_MAX_RETRIES=2
    missing = await model_client.get("/api/v1/sessions/u/history")
    assert missing.status_code == 404  # nothing was produced, so nothing was stored


async def test_request_id_kept_or_replaced(client: TestClientProtocol) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc-123_x.y"})
    assert response.headers["X-Request-ID"] == "abc-123_x.y"
    response = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] != "bad id with spaces"
    assert len(response.headers["X-Request-ID"]) == 32


async def test_sessions_list_history_delete(model_client: TestClientProtocol) -> None:
    for sid in ("a", "b"):
        await model_client.post("/api/v1/chat", json={"session_id": sid, "message": f"hi {sid}"})
    listing = await (await model_client.get("/api/v1/sessions")).get_json()
    assert listing["tenant_id"] == "default" and listing["count"] == 2
    assert [s["session_id"] for s in listing["sessions"]] == ["b", "a"]
    assert set(listing["sessions"][0]) == {
        "session_id",
        "tenant_id",
        "user_id",
        "message_count",
        "created_at",
        "last_activity",
    }

    deleted = await model_client.delete("/api/v1/sessions/a")
    assert await deleted.get_json() == {"deleted": True, "session_id": "a", "tenant_id": "default"}
    again = await model_client.delete("/api/v1/sessions/a")
    assert again.status_code == 404
    assert_error(await again.get_json(), "not_found")
    history = await model_client.get("/api/v1/sessions/a/history")
    assert history.status_code == 404
    bad = await model_client.get("/api/v1/sessions/a/history?tenant_id=bad%20tenant")
    assert bad.status_code == 400


async def test_tenants_are_isolated(model_client: TestClientProtocol) -> None:
    await model_client.post(
        "/api/v1/chat", json={"session_id": "same", "message": "from A", "tenant_id": "A"}
    )
    await model_client.post(
        "/api/v1/chat", json={"session_id": "same", "message": "from B", "tenant_id": "B"}
    )
    a = await (await model_client.get("/api/v1/sessions/same/history?tenant_id=A")).get_json()
    b = await (await model_client.get("/api/v1/sessions/same/history?tenant_id=B")).get_json()
    assert [m["content"] for m in a["messages"]] == ["from A", "Echo: from A"]
    assert [m["content"] for m in b["messages"]] == ["from B", "Echo: from B"]
    assert (await model_client.get("/api/v1/sessions/same/history")).status_code == 404
    assert (await (await model_client.get("/api/v1/sessions?tenant_id=C")).get_json())["count"] == 0
    await model_client.delete("/api/v1/sessions/same?tenant_id=A")
    assert (await model_client.get("/api/v1/sessions/same/history?tenant_id=B")).status_code == 200
    # Ids with ':' cannot collide across tenants.
    await model_client.post("/api/v1/chat", json={"session_id": "b:c", "message": "x", "tenant_id": "a"})
    assert (await model_client.get("/api/v1/sessions/c/history?tenant_id=a:b")).status_code == 404


async def test_concurrent_turns_on_one_session_run_in_order(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say("slow first answer", delay=0.03), Reply.say("second answer"))
    first = model_client.post("/api/v1/chat", json={"session_id": "c", "message": "one"})
    second = model_client.post("/api/v1/chat", json={"session_id": "c", "message": "two"})
    r1, r2 = await asyncio.gather(first, second)
    counts = sorted([(await r1.get_json())["message_count"], (await r2.get_json())["message_count"]])
    assert counts == [2, 4]
    history = await (await model_client.get("/api/v1/sessions/c/history")).get_json()
    roles = [m["role"] for m in history["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    contents = [m["content"] for m in history["messages"]]
    assert contents[1] == "slow first answer" and contents[3] == "second answer"
    # The second turn's model call saw the first turn complete.
    assert len(openai_server.requests[1]["messages"]) == 4


async def test_health_endpoints(client: TestClientProtocol) -> None:
    for path in ("/health", "/health/liveness"):
        body = await (await client.get(path)).get_json()
        assert body["status"] == "healthy" and body["uptime_seconds"] >= 0 and body["timestamp"]
    response = await client.get("/health/readiness")
    body = await response.get_json()
    assert response.status_code == 200
    assert body["checks"]["model"] == "ok"
    assert body["status"] in ("healthy", "degraded")


async def test_readiness_unhealthy_when_model_down(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm_provider="openai", openai_base_url="http://127.0.0.1:9/v1")
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().get("/health/readiness")
        assert response.status_code == 503
        body = await response.get_json()
        assert body["status"] == "unhealthy" and body["checks"]["model"].startswith("unreachable")


async def test_openapi_and_docs(client: TestClientProtocol) -> None:
    spec = await (await client.get("/openapi.json")).get_json()
    assert "/api/v1/chat" in spec["paths"] and "/api/v1/sessions/{session_id}/history" in spec["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "openapi.json" in (await docs.get_data(as_text=True))


async def test_cors(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, enable_cors=True, cors_origins="https://shop.example"))
    async with app.test_app():
        client = app.test_client()
        ok = await client.get("/health", headers={"Origin": "https://shop.example"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        pre = await client.options(
            "/api/v1/chat",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]


def test_an_unknown_override_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown overrides: sesions"):
        create_app(make_settings(tmp_path), sesions=MemorySessionStore())
