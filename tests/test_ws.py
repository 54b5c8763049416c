"""The WebSocket chat channel over real Hypercorn: protocol, auth, stop and disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from msev15 import create_app
from msev15.settings import Settings
from tests.conftest import make_settings
from tests.helpers import eventually
from tests.openai_server import Reply, ScriptedOpenAI
from tests.servers import serve_on_loopback

SLOW = " ".join(f"w{i}" for i in range(60))
TURN_TASKS = {"turn", "turn-publisher", "ws-turn", "ws-chats"}


async def served(settings: Settings) -> AsyncIterator[str]:
    async with serve_on_loopback(create_app(settings)) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
async def host(settings: Settings) -> AsyncIterator[str]:
    async for found in served(settings):
        yield found


@pytest.fixture
async def model_host(model_settings: Settings) -> AsyncIterator[str]:
    async for found in served(model_settings):
        yield found


async def recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout=10)
    body: dict[str, Any] = json.loads(raw)
    return body


async def until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every event of one turn, up to and including its `done` or `error`."""
    events = []
    while True:
        event = await recv(ws)
        events.append(event)
        if event["type"] in {"done", "error"}:
            return events


def turn_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() in TURN_TASKS and not t.done()]


async def history(host: str, session_id: str, tenant: str = "default") -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://{host}") as http:
        response = await http.get(f"/api/v1/sessions/{session_id}/history", params={"tenant_id": tenant})
        body: dict[str, Any] = response.json()
        body["_status"] = response.status_code
        return body


def chat(session_id: str, message: str, **extra: Any) -> str:
    return json.dumps({"type": "chat", "session_id": session_id, "message": message, **extra})


async def test_chat_events_arrive_in_order_and_end_with_done(
    model_host: str, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.call("get_current_time"), Reply.say("It is noon somewhere."))
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:
        await ws.send(chat("s1", "What time is it?"))
        events = await until_end(ws)
    types = [e["type"] for e in events]
    assert types[:2] == ["tool_call", "tool_result"]
    assert types[-1] == "done" and set(types[2:-1]) == {"token"}
    call, result, done = events[0], events[1], events[-1]
    assert call["name"] == "get_current_time" and call["arguments"] == {}
    assert result["id"] == call["id"] and result["ok"] is True and "utc" in result["content"]
    assert "".join(e["content"] for e in events if e["type"] == "token") == "It is noon somewhere."
    assert done["message"] == "It is noon somewhere." and done["message_count"] == 2
    assert all(e["session_id"] == "s1" and e["tenant_id"] == "default" for e in events)


async def test_ping_and_bad_frames_keep_the_socket_open(host: str) -> None:
    async with connect(f"ws://{host}/api/v1/chat/ws") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        for bad in [
            "not json",
            "[1, 2]",
            json.dumps({"type": "dance"}),
            json.dumps({"type": "chat", "session_id": "bad id!", "message": "hi"}),
            json.dumps({"type": "chat", "session_id": "s1"}),
            json.dumps({"type": "chat", "session_id": "s1", "message": "hi", "extra": 1}),
        ]:
            await ws.send(bad)
            event = await recv(ws)
            assert event["type"] == "error" and event["code"] == "validation_error", bad
            assert isinstance(event["error"], str) and event["error"]
        await ws.send(chat("s1", "hello"))
        events = await until_end(ws)
        assert events[-1]["type"] == "done"


async def test_several_chats_in_turn_on_one_socket(model_host: str) -> None:
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:
        for n in range(1, 4):
            await ws.send(chat("multi", f"message {n}"))
            events = await until_end(ws)
            assert events[-1]["message"] == f"Echo: message {n}"
            assert events[-1]["message_count"] == 2 * n
        # chats sent back to back are queued and answered in order
        await ws.send(chat("multi", "A"))
        await ws.send(chat("other", "B"))
        first, second = await until_end(ws), await until_end(ws)
    assert first[-1]["message"] == "Echo: A" and first[-1]["session_id"] == "multi"
    assert second[-1]["message"] == "Echo: B" and second[-1]["session_id"] == "other"
    assert first[-1]["request_id"] != second[-1]["request_id"]


async def test_api_keys_are_checked_before_accept(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys="key1:tenant-a,key2:tenant-b")
    async for host in served(settings):
        url = f"ws://{host}/api/v1/chat/ws"
        for bad in [url, f"{url}?api_key=nope"]:
            with pytest.raises(InvalidStatus) as caught:
                async with connect(bad):
                    pass
            assert caught.value.response.status_code == 401
            assert json.loads(caught.value.response.body or b"{}")["error"]["type"] == "unauthorized"
        async with connect(f"{url}?api_key=key1") as ws:
            await ws.send(chat("s1", "hi"))
            events = await until_end(ws)
            assert events[-1]["type"] == "done" and events[-1]["tenant_id"] == "tenant-a"
            # another tenant than the key's is refused, and the socket stays usable
            await ws.send(chat("s1", "hi", tenant_id="tenant-b"))
            refused = await recv(ws)
            assert refused["type"] == "error" and refused["code"] == "forbidden"
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"
        async with connect(url, additional_headers={"Authorization": "Bearer key2"}) as ws:
            await ws.send(chat("s1", "hi"))
            assert (await until_end(ws))[-1]["tenant_id"] == "tenant-b"


async def test_a_dropped_socket_does_not_stop_the_answer_and_a_new_one_resumes_it(
    model_host: str, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(SLOW, delay=0.02))
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:
        await ws.send(chat("gone", "tell me a long story"))
        seen = [await recv(ws) for _ in range(3)]
        assert [e["type"] for e in seen] == ["token"] * 3 and [e["seq"] for e in seen] == [1, 2, 3]
    turn_id = seen[0]["turn_id"]
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:  # the customer is back
        resume = {"type": "resume", "session_id": "gone", "turn_id": turn_id, "after": 3}
        await ws.send(json.dumps(resume))
        rest = await until_end(ws)
    assert [e["seq"] for e in rest] == list(range(4, 4 + len(rest)))  # each event exactly once
    assert rest[-1]["type"] == "done" and "interrupted" not in rest[-1]
    text = "".join(e["content"] for e in [*seen, *rest] if e["type"] == "token")
    assert text == SLOW == rest[-1]["message"]
    body = await history(model_host, "gone")  # the whole answer was stored, as the client saw it
    user, answer = body["messages"]
    assert user["content"] == "tell me a long story"
    assert answer["content"] == SLOW and "interrupted" not in answer


async def test_a_dropped_sse_stream_resumes_from_last_event_id(
    model_host: str, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(SLOW, delay=0.02))
    body = {"session_id": "sse-gone", "message": "tell me a long story"}
    seen: list[dict[str, Any]] = []
    last_id = ""
    async with httpx.AsyncClient(base_url=f"http://{model_host}") as http:
        async with http.stream("POST", "/api/v1/chat/stream", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    last_id = line[4:]
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if len(seen) == 3:
                        break
        assert last_id == f"{seen[-1]['turn_id']}:3"
        resumed = await http.get("/api/v1/sessions/sse-gone/stream", headers={"Last-Event-ID": last_id})
    assert resumed.status_code == 200
    rest = [json.loads(line[6:]) for line in resumed.text.splitlines() if line.startswith("data: ")]
    assert [e["seq"] for e in rest] == list(range(4, 4 + len(rest)))
    text = "".join(e["content"] for e in [*seen, *rest] if e["type"] == "token")
    assert rest[-1]["type"] == "done" and text == SLOW
    stored = await history(model_host, "sse-gone")
    assert stored["messages"][-1]["content"] == SLOW and "interrupted" not in stored["messages"][-1]


async def test_a_socket_dropped_before_any_output_still_gets_its_answer_stored(
    model_host: str, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say("late but whole", hang=0.3))
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:
        await ws.send(chat("silent", "hello?"))
        await eventually(lambda: _has_turn_task())
    await eventually(lambda: _no_turn_tasks())

    async def stored() -> bool:
        return (await history(model_host, "silent"))["_status"] == 200

    await eventually(stored)
    assert (await history(model_host, "silent"))["messages"][-1]["content"] == "late but whole"


async def test_stop_frame_cancels_the_turn_and_the_socket_carries_on(
    model_host: str, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(SLOW, delay=0.05))
    async with connect(f"ws://{model_host}/api/v1/chat/ws") as ws:
        await ws.send(json.dumps({"type": "stop"}))  # nothing in flight: ignored
        await ws.send(chat("stopme", "tell me a long story"))
        assert (await recv(ws))["type"] == "token"
        await ws.send(json.dumps({"type": "stop"}))
        events = await until_end(ws)
        done = events[-1]
        assert done["type"] == "done" and done["interrupted"] is True
        assert done["message_count"] == 2 and done["message"].startswith("w0")
        assert len(done["message"]) < len(SLOW)
        await eventually(lambda: _no_turn_tasks())
        stored = await history(model_host, "stopme")
        assert stored["messages"][-1]["interrupted"] is True
        assert stored["messages"][-1]["content"] == done["message"]
        await ws.send(chat("stopme", "and now?"))
        after = await until_end(ws)
        assert after[-1]["type"] == "done" and "interrupted" not in after[-1]
        assert after[-1]["message_count"] == 4


async def _no_turn_tasks() -> bool:
    return not turn_tasks()


async def _has_turn_task() -> bool:
    return bool(turn_tasks())
