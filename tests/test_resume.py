"""Answers that survive dropped connections: the turn buffer, resume and stop, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from msev15 import create_app
from msev15.settings import Settings
from msev15.stores.turns import KEEPALIVE, MemoryTurnBuffer, TurnGone, TurnInfo
from tests.openai_server import Reply, ScriptedOpenAI
from tests.redis_server import RedisServer
from tests.servers import serve_on_loopback

WORDS = " ".join(f"w{i}" for i in range(30))
CANCEL = {"order_id": "ORD-1001", "customer_email": "alice@example.com", "reason": "changed my mind"}


@pytest.fixture
async def http(model_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = model_settings.model_copy(update={"require_confirmation": False})
    async with serve_on_loopback(create_app(settings)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def cut_after(
    client: httpx.AsyncClient, session: str, message: str, count: int
) -> list[dict[str, Any]]:
    """Start a streamed chat and drop the connection after `count` events (0: before any)."""
    seen: list[dict[str, Any]] = []
    body = {"session_id": session, "message": message}
    async with client.stream("POST", "/api/v1/chat/stream", json=body) as response:
        assert response.status_code == 200
        if count:
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if len(seen) == count:
                        break
    return seen


async def resume(client: httpx.AsyncClient, session: str, position: str | None) -> list[dict[str, Any]]:
    headers = {"Last-Event-ID": position} if position else {}
    response = await client.get(f"/api/v1/sessions/{session}/stream", headers=headers)
    assert response.status_code == 200, response.text
    return events_of(response.text)


async def stored_answer(client: httpx.AsyncClient, session: str) -> dict[str, Any]:
    body = (await client.get(f"/api/v1/sessions/{session}/history")).json()
    return dict(body["messages"][-1])


@pytest.mark.parametrize("cut", [0, 1, 12, "tool", "done"])
async def test_a_cut_at_any_point_resumes_to_what_the_history_holds(
    http: httpx.AsyncClient, openai_server: ScriptedOpenAI, cut: int | str
) -> None:
    openai_server.push(
        Reply.call("get_order", {"order_id": "ORD-1001", "customer_email": "alice@example.com"})
    )
    openai_server.push(Reply.say(WORDS, delay=0.01))
    session = f"cut-{cut}"
    if cut == "tool":
        seen = await cut_after(http, session, "where is my order?", 2)  # tool_call, tool_result
        assert [e["type"] for e in seen] == ["tool_call", "tool_result"]
    elif cut == "done":
        seen = await cut_after(http, session, "where is my order?", 10_000)
        assert seen[-1]["type"] == "done"
    else:
        seen = await cut_after(http, session, "where is my order?", int(cut))
    position = f"{seen[-1]['turn_id']}:{seen[-1]['seq']}" if seen else None
    rest = await resume(http, session, position)
    whole = [*seen, *rest]
    assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))  # nothing lost, nothing twice
    assert whole[-1]["type"] == "done"
    text = "".join(e["content"] for e in whole if e["type"] == "token")
    answer = await stored_answer(http, session)
    assert answer["content"] == text == whole[-1]["message"] == WORDS
    assert [c["name"] for c in answer["tool_calls"]] == ["get_order"]


async def test_several_clients_follow_one_turn_and_a_stalled_reader_slows_nothing(
    http: httpx.AsyncClient, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(WORDS, delay=0.01))
    first = await cut_after(http, "many", "story please", 1)
    turn_id = first[0]["turn_id"]
    # A reader that opens the stream and never reads: the turn must not wait for it.
    stalled = http.stream("GET", "/api/v1/sessions/many/stream", headers={"Last-Event-ID": f"{turn_id}:0"})
    async with stalled as never_read:
        assert never_read.status_code == 200
        started = time.monotonic()
        readers = await asyncio.gather(*(resume(http, "many", f"{turn_id}:{n}") for n in (0, 1, 5)))
        assert time.monotonic() - started < 10
    full, after_one, after_five = readers
    assert [e["seq"] for e in full] == list(range(1, len(full) + 1))
    assert after_one == full[1:] and after_five == full[5:]
    assert (await stored_answer(http, "many"))["content"] == WORDS


async def test_stop_during_a_tool_call_keeps_its_effect_and_marks_the_answer(
    http: httpx.AsyncClient, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.call("cancel_order", CANCEL), Reply.say(WORDS, delay=0.05))
    seen = await cut_after(http, "stopme", "cancel ORD-1001 please", 2)
    assert [e["type"] for e in seen] == ["tool_call", "tool_result"] and seen[1]["ok"] is True
    stop = await http.post("/api/v1/sessions/stopme/stop")
    assert stop.status_code == 200
    assert stop.json() == {"stopped": True, "session_id": "stopme", "turn_id": seen[0]["turn_id"]}
    rest = await resume(http, "stopme", f"{seen[-1]['turn_id']}:2")
    assert rest[-1]["type"] == "done" and rest[-1]["interrupted"] is True
    answer = await stored_answer(http, "stopme")
    assert answer["interrupted"] is True and answer["content"] == rest[-1]["message"]
    assert [c["name"] for c in answer["tool_calls"]] == ["cancel_order"]
    order = await http.post(
        "/api/v1/chat", json={"session_id": "check", "message": "status of ORD-1001 alice@example.com"}
    )
    assert order.status_code == 200  # the session lock was released by the stop
    again = await http.post("/api/v1/sessions/stopme/stop")
    assert again.json() == {"stopped": False, "session_id": "stopme", "turn_id": None}


async def test_resume_refusals(http: httpx.AsyncClient, openai_server: ScriptedOpenAI) -> None:
    assert (await http.get("/api/v1/sessions/nothing/stream")).status_code == 404
    assert (await http.post("/api/v1/sessions/nothing/stop")).status_code == 404
    bad = await http.get("/api/v1/sessions/x/stream", headers={"Last-Event-ID": "no-colon"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "validation_error"
    unknown = await http.get("/api/v1/sessions/x/stream", headers={"Last-Event-ID": "abcdefgh:3"})
    assert unknown.status_code == 404
    openai_server.push(Reply.say("short"))
    done = await cut_after(http, "other", "hi", 10)
    elsewhere = await http.get(
        "/api/v1/sessions/not-other/stream", headers={"Last-Event-ID": f"{done[0]['turn_id']}:0"}
    )
    assert elsewhere.status_code == 404  # a turn id only resumes in its own session


async def test_the_buffer_expires_and_caps_each_turn() -> None:
    clock = [0.0]
    buffer = MemoryTurnBuffer(keep_seconds=5, max_events=3, clock=lambda: clock[0])
    await buffer.open(TurnInfo("turn-aaaa", "t", "s", None, 0.0))
    for seq in range(1, 6):
        buffer.add("turn-aaaa", seq, b'{"seq": %d}' % seq)
    await buffer.finish("turn-aaaa")
    replay = [item async for item in await buffer.read("turn-aaaa", 2)]
    assert [seq for seq, _ in replay] == [3, 4, 5]  # the cap dropped 1 and 2
    with pytest.raises(TurnGone):
        await buffer.read("turn-aaaa", 1)  # before what is kept: read the history instead
    clock[0] = 6.0
    with pytest.raises(TurnGone):
        await buffer.read("turn-aaaa", 4)
    assert await buffer.latest("t", "s") is None and len(buffer) == 0


async def test_a_quiet_turn_sends_keep_alives_and_a_busy_one_only_its_events() -> None:
    buffer = MemoryTurnBuffer(keep_seconds=60)
    await buffer.open(TurnInfo("turn-q", "t", "s", None, 0.0))
    quiet = await buffer.read("turn-q", 0, idle=0.05)
    busy = await buffer.read("turn-q", 0, idle=2.0)
    started = time.monotonic()
    assert await anext(quiet) is KEEPALIVE
    assert time.monotonic() - started >= 0.05
    assert await anext(quiet) is KEEPALIVE  # and again while it stays quiet

    async def feed() -> None:
        for seq in range(1, 6):
            buffer.add("turn-q", seq, b"%d" % seq)
            await asyncio.sleep(0.01)
        await buffer.finish("turn-q")

    feeding = asyncio.create_task(feed())
    assert [item async for item in busy] == [(seq, b"%d" % seq) for seq in range(1, 6)]
    await feeding
    assert [item async for item in quiet if item is not KEEPALIVE] == [
        (seq, b"%d" % seq) for seq in range(1, 6)
    ]


async def test_ended_turns_replay_exactly_and_the_oldest_go_first_over_the_total_cap() -> None:
    buffer = MemoryTurnBuffer(keep_seconds=300, max_kept_bytes=250)
    events = {f"turn-{n}": [b'{"n": %d, "e": "%s"}' % (n, b"x" * seq) for seq in range(5)] for n in range(4)}
    for turn_id, datas in events.items():  # 4 turns of 5 events, 95 bytes each
        await buffer.open(TurnInfo(turn_id, "t", turn_id, None, 0.0))
        live = await buffer.read(turn_id, 0)  # a reader that follows from the start
        for seq, data in enumerate(datas, 1):
            buffer.add(turn_id, seq, data)
        await buffer.finish(turn_id)
        assert [item async for item in live] == list(enumerate(datas, 1))
    assert len(buffer) == 2  # 190 of 250 bytes kept: the two oldest were forgotten
    for turn_id in ("turn-0", "turn-1"):
        with pytest.raises(TurnGone):
            await buffer.read(turn_id)
        assert await buffer.latest("t", turn_id) is None
    for turn_id in ("turn-2", "turn-3"):
        assert [item async for item in await buffer.read(turn_id, 2)] == list(enumerate(events[turn_id], 1))[
            2:
        ]


async def test_an_expired_turn_is_a_404(model_settings: Settings, openai_server: ScriptedOpenAI) -> None:
    settings = model_settings.model_copy(update={"resume_buffer_seconds": 1})
    app = create_app(settings)
    async with serve_on_loopback(app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            openai_server.push(Reply.say("hello"))
            done = await cut_after(client, "exp", "hi", 10)
            position = f"{done[0]['turn_id']}:0"
            kept = await client.get("/api/v1/sessions/exp/stream", headers={"Last-Event-ID": position})
            assert kept.status_code == 200
            buffer = app.extensions["msev15"].runner.buffer
            buffer._clock = lambda: time.monotonic() + 5  # as if the keep time had passed
            gone = await client.get("/api/v1/sessions/exp/stream", headers={"Last-Event-ID": position})
            assert gone.status_code == 404


async def test_resume_on_another_instance_through_redis(
    tmp_path: Path, make_model_settings: Any, openai_server: ScriptedOpenAI
) -> None:
    """With SESSION_STORE=redis the buffer is a Redis Stream: instance B serves A's answer."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        settings = make_model_settings(session_store="redis", redis_url=redis.url)
        openai_server.push(Reply.say(WORDS, delay=0.01))
        async with (
            serve_on_loopback(create_app(settings)) as port_a,
            serve_on_loopback(create_app(settings)) as port_b,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}", timeout=30) as a,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}", timeout=30) as b,
        ):
            seen = await cut_after(a, "roam", "a long one please", 3)
            rest = await resume(b, "roam", f"{seen[-1]['turn_id']}:3")
            whole = [*seen, *rest]
            assert [e["seq"] for e in whole] == list(range(1, len(whole) + 1))
            assert whole[-1]["type"] == "done" and whole[-1]["message"] == WORDS
            assert (await stored_answer(b, "roam"))["content"] == WORDS
            latest = await resume(b, "roam", None)  # no position: the latest turn, from its start
            assert latest == whole
    finally:
        redis.stop()


async def test_a_stop_frame_stops_an_answer_resumed_on_a_new_socket(
    http: httpx.AsyncClient, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say(WORDS, delay=0.05))
    seen = await cut_after(http, "ws-stop", "a long one", 2)
    host = str(http.base_url).removeprefix("http://").rstrip("/")
    async with connect(f"ws://{host}/api/v1/chat/ws") as ws:
        frame = {"type": "resume", "session_id": "ws-stop", "turn_id": seen[0]["turn_id"], "after": 2}
        await ws.send(json.dumps(frame))
        first = json.loads(await ws.recv())
        assert first["seq"] == 3
        await ws.send(json.dumps({"type": "stop"}))
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            if event["type"] in ("done", "error"):
                break
    assert event["type"] == "done" and event["interrupted"] is True
    assert (await stored_answer(http, "ws-stop"))["interrupted"] is True
