"""Issue 7's limits, each set by its setting and seen at the API: a clear error or a documented behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.agent.loop import INSTRUCTIONS
from tests.conftest import MakeModelSettings
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_api import sse_events

ALICE = "alice@example.com"


@asynccontextmanager
async def limited(make_model_settings: MakeModelSettings, **limits: Any) -> AsyncIterator[TestClientProtocol]:
    """The app on the scripted model with some limits changed."""
    app = create_app(make_model_settings(model_timeout_seconds=5.0, **limits))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def chat(client: TestClientProtocol, session_id: str, message: str, **extra: Any) -> tuple[int, Any]:
    response = await client.post("/api/v1/chat", json={"session_id": session_id, "message": message, **extra})
    return response.status_code, await response.get_json()


async def test_max_tool_rounds_stops_a_model_that_never_stops_calling_tools(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.call("get_current_time", times=-1))
    async with limited(make_model_settings, max_tool_rounds=3) as client:
        status, body = await chat(client, "r", "what time is it?")
    assert status == 200, body
    assert len(openai_server.requests) == 3
    assert [c["name"] for c in body["tool_calls"]] == ["get_current_time"] * 3
    assert "more steps than I may take in one turn" in body["message"]


async def test_tool_result_max_chars_clips_what_the_model_and_client_see(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply.call("get_order", {"order_id": "ORD-1001", "customer_email": ALICE}), Reply.say("ok")
    )
    async with limited(make_model_settings, tool_result_max_chars=200) as client:
        response = await client.post("/api/v1/chat/stream", json={"session_id": "c", "message": "ORD-1001?"})
        events = sse_events(await response.get_data())
    [result] = [e for e in events if e["type"] == "tool_result"]
    assert result["ok"] is True and result["content"].endswith("[truncated]")
    assert len(result["content"]) <= 200 + len(" …[truncated]")
    tool_message = openai_server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == result["content"]
    assert events[-1]["type"] == "done"


async def test_turn_timeout_stops_a_slow_model_and_keeps_the_session_usable(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    # The first word comes at once, the whole answer would take 10 s: the limit cuts it after 2 s.
    openai_server.push(Reply.say("one two three four five six seven eight", delay=1.5))
    async with limited(make_model_settings, turn_timeout_seconds=2.0) as client:
        response = await client.post("/api/v1/chat/stream", json={"session_id": "t", "message": "slowly"})
        events = sse_events(await response.get_data())
        assert events[-1]["type"] == "error" and events[-1]["code"] == "unavailable"
        assert "longer than 2 s" in events[-1]["error"]
        shown = "".join(e["content"] for e in events if e["type"] == "token")
        assert shown and shown != "one two three four five six seven eight"
        history = await (await client.get("/api/v1/sessions/t/history")).get_json()
        assert [(m["role"], m.get("interrupted", False)) for m in history["messages"]] == [
            ("user", False),
            ("assistant", True),
        ]
        assert history["messages"][1]["content"] == shown
        openai_server.push(Reply.say("quick now"))
        status, body = await chat(client, "t", "again")
        assert status == 200 and body["message"] == "quick now" and body["message_count"] == 4


async def test_model_context_chars_drops_the_oldest_turns_and_keeps_the_instructions(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    budget = len(INSTRUCTIONS) + 2000
    async with limited(make_model_settings, model_context_chars=budget) as client:
        for n in range(8):  # the echo model answers with the question: about 600 characters a turn
            status, _ = await chat(client, "h", f"turn {n} " + "x" * 290)
            assert status == 200
    last = openai_server.requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": INSTRUCTIONS}
    assert sum(len(m["content"]) for m in last) <= budget
    assert last[1]["role"] == "user" and not last[1]["content"].startswith("turn 0 ")  # oldest dropped
    assert last[-1]["content"].startswith("turn 7 ")  # the new message always goes
    assert last[-2]["content"].startswith("Echo: turn 6 ")  # the most recent history is kept
    assert [m["role"] for m in last[1:]] == ["user", "assistant"] * ((len(last) - 2) // 2) + ["user"]


async def test_max_sessions_per_tenant_refuses_a_new_session_plainly(
    make_model_settings: MakeModelSettings,
) -> None:
    async with limited(make_model_settings, max_sessions_per_tenant=2) as client:
        assert (await chat(client, "one", "hi"))[0] == 200
        assert (await chat(client, "two", "hi"))[0] == 200
        status, body = await chat(client, "three", "hi")
        assert status == 400 and body["error"]["type"] == "validation_error"
        assert "limit of sessions" in body["error"]["message"]
        assert (await client.get("/api/v1/sessions/three/history")).status_code == 404
        assert (await chat(client, "one", "existing sessions go on"))[0] == 200
        assert (await chat(client, "three", "another tenant has room", tenant_id="other"))[0] == 200


async def test_max_messages_per_session_keeps_the_newest(make_model_settings: MakeModelSettings) -> None:
    async with limited(make_model_settings, max_messages_per_session=4) as client:
        for n in range(3):
            status, body = await chat(client, "m", f"q{n}")
            assert status == 200
        assert body["message_count"] == 4
        history = await (await client.get("/api/v1/sessions/m/history")).get_json()
    assert [m["content"] for m in history["messages"]] == ["q1", "Echo: q1", "q2", "Echo: q2"]
