"""The agent loop on its own, driven by the in-process ScriptedModel: fast, exact, no HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from msev15 import create_app
from msev15.agent.events import (
    ApprovalAnswer,
    ApprovalRequiredEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    Turn,
)
from msev15.agent.loop import INSTRUCTIONS, Agent
from msev15.agent.turn_state import AgentLimits, TurnRefused
from msev15.stores.sessions import MemorySessionStore
from msev15.tools.registry import Tool, ToolArgs, ToolContext, ToolRegistry
from tests.conftest import make_settings
from tests.scripted_model import Reply, ScriptedModel

TENANT, SESSION = "shop", "s-1"
STOPPED = "\n\n(I stopped here: this request needed more steps than I may take in one turn.)"


class _OrderArgs(ToolArgs):
    order_id: str


class Shop:
    """Two tools: a harmless lookup, and a cancel that changes the world (so it needs approval)."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def lookup(self, args: _OrderArgs, ctx: ToolContext) -> dict[str, str]:
        return {"order_id": args.order_id, "status": "shipped"}

    async def cancel(self, args: _OrderArgs, ctx: ToolContext) -> dict[str, str]:
        self.cancelled.append(args.order_id)
        return {"order_id": args.order_id, "status": "cancelled"}

    def tools(self) -> ToolRegistry:
        registry = ToolRegistry(default_timeout=5.0)
        registry.register_all(
            [
                Tool("lookup_order", "Look an order up.", _OrderArgs, self.lookup),
                Tool(
                    "cancel_order",
                    "Cancel an order.",
                    _OrderArgs,
                    self.cancel,
                    consequential=True,
                    summary=lambda a: f"Cancel order {a['order_id']}",
                ),
            ]
        )
        return registry


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def sessions() -> MemorySessionStore:
    return MemorySessionStore()


@pytest.fixture
def agent(model: ScriptedModel, shop: Shop, sessions: MemorySessionStore) -> Agent:
    return Agent(model, shop.tools(), sessions, AgentLimits(max_tool_rounds=3))


async def turn(agent: Agent, message: str | None, *approvals: ApprovalAnswer) -> list[Event]:
    return [e async for e in agent.run(Turn(TENANT, SESSION, "req-1", message, approvals))]


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def ending(events: list[Event]) -> DoneEvent | ErrorEvent:
    """The one `done` or `error`, which must be the last event."""
    ends = [e for e in events if isinstance(e, DoneEvent | ErrorEvent)]
    assert len(ends) == 1 and events[-1] is ends[0], types(events)
    return ends[0]


def text(events: list[Event]) -> str:
    return "".join(e.content for e in events if isinstance(e, TokenEvent))


async def test_a_text_only_turn_streams_tokens_and_ends_with_one_done(
    agent: Agent, model: ScriptedModel, sessions: MemorySessionStore
) -> None:
    model.push(Reply.say("Hello, how can I help?"))
    events = await turn(agent, "hi")
    assert types(events) == ["token"] * 5 + ["done"]  # one per word
    done = ending(events)
    assert isinstance(done, DoneEvent)
    assert done.message == text(events) == "Hello, how can I help?"
    assert (done.message_count, done.interrupted) == (2, False)
    [sent] = model.requests
    assert sent["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "hi"},
    ]
    assert [t["function"]["name"] for t in sent["tools"]] == ["lookup_order", "cancel_order"]
    stored = await sessions.get(TENANT, SESSION)
    assert stored is not None
    assert [(m.role, m.content) for m in stored.messages] == [("user", "hi"), ("assistant", done.message)]


async def test_a_tool_call_then_an_answer_and_the_model_sees_the_result(
    agent: Agent, model: ScriptedModel, sessions: MemorySessionStore
) -> None:
    model.push(Reply.call("lookup_order", {"order_id": "A1"}), Reply.say("It has shipped."))
    events = await turn(agent, "where is A1?")
    assert types(events) == ["tool_call", "tool_result", "token", "token", "token", "done"]
    call, result = events[0], events[1]
    assert isinstance(call, ToolCallEvent) and isinstance(result, ToolResultEvent)
    assert (call.name, call.arguments) == ("lookup_order", {"order_id": "A1"})
    assert (result.id, result.ok) == (call.id, True)
    assert result.content is not None
    assert orjson.loads(result.content) == {"order_id": "A1", "status": "shipped"}

    first, second = model.requests
    assert first["messages"][-1] == {"role": "user", "content": "where is A1?"}
    asked, answered = second["messages"][-2:]
    assert asked["role"] == "assistant" and asked["content"] is None
    assert asked["tool_calls"] == [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": "lookup_order", "arguments": '{"order_id":"A1"}'},
        }
    ]
    assert answered == {"role": "tool", "tool_call_id": call.id, "content": result.content}

    done = ending(events)
    assert isinstance(done, DoneEvent) and done.message == "It has shipped."
    stored = await sessions.get(TENANT, SESSION)
    assert stored is not None and stored.messages[-1].tool_calls == [
        {
            "id": call.id,
            "name": "lookup_order",
            "arguments": {"order_id": "A1"},
            "ok": True,
            "result": result.content,  # what the model read, so later turns can read it too
        }
    ]


async def test_tool_rounds_are_bounded_for_a_model_that_never_stops_calling_tools(
    agent: Agent, model: ScriptedModel
) -> None:
    model.push(Reply.call("lookup_order", {"order_id": "A1"}, times=-1))
    events = await turn(agent, "loop forever")
    assert len(model.requests) == 3  # AgentLimits(max_tool_rounds=3)
    assert types(events) == ["tool_call", "tool_result"] * 3 + ["token", "done"]
    done = ending(events)
    assert isinstance(done, DoneEvent)
    assert done.message == text(events) == STOPPED


async def test_a_stream_that_breaks_off_ends_with_one_error_and_keeps_the_partial_text(
    agent: Agent, model: ScriptedModel, sessions: MemorySessionStore
) -> None:
    model.push(Reply.say("one two three four", die_after=2))
    events = await turn(agent, "count")
    assert types(events) == ["token", "token", "error"]
    error = ending(events)
    assert isinstance(error, ErrorEvent) and error.code == "unavailable"
    assert "the model is unavailable" in error.error
    stored = await sessions.get(TENANT, SESSION)
    assert stored is not None
    user, answer = stored.messages
    assert (user.content, answer.content, answer.interrupted) == ("count", "one two ", True)


async def test_a_model_unavailable_before_any_output_stores_nothing(
    agent: Agent, model: ScriptedModel, sessions: MemorySessionStore
) -> None:
    model.push(Reply.error(503))
    events = await turn(agent, "hello?")
    error = ending(events)
    assert types(events) == ["error"] and isinstance(error, ErrorEvent) and error.code == "unavailable"
    assert await sessions.get(TENANT, SESSION) is None


async def test_a_consequential_call_waits_for_approval_then_runs_once(
    agent: Agent, model: ScriptedModel, shop: Shop, sessions: MemorySessionStore
) -> None:
    model.push(Reply.call("cancel_order", {"order_id": "A1"}), Reply.say("never asked"))
    events = await turn(agent, "cancel A1")
    assert types(events) == ["approval_required", "token", "done"]
    proposal = events[0]
    assert isinstance(proposal, ApprovalRequiredEvent)
    assert (proposal.name, proposal.arguments, proposal.summary) == (
        "cancel_order",
        {"order_id": "A1"},
        "Cancel order A1",
    )
    assert len(model.requests) == 1  # the customer decides before the model goes on
    assert shop.cancelled == []
    assert text(events) == 'Please confirm: Cancel order A1. Reply "yes" to go ahead or "no" to leave it.'
    stored = await sessions.get(TENANT, SESSION)
    assert stored is not None
    assert [p["id"] for p in stored.metadata["pending_approvals"]] == [proposal.id]

    model.script.clear()
    model.push(Reply.say("Cancelled."))
    events = await turn(agent, None, ApprovalAnswer(proposal.id, approve=True))
    assert types(events) == ["tool_call", "tool_result", "token", "done"]
    result = events[1]
    assert isinstance(result, ToolResultEvent) and result.ok
    assert shop.cancelled == ["A1"]
    # The model sees the decided call and its result, not a fresh user message.
    decided = model.requests[-1]["messages"]
    assert decided[-2]["tool_calls"][0]["function"]["name"] == "cancel_order"
    assert decided[-1] == {"role": "tool", "tool_call_id": proposal.id, "content": result.content}

    with pytest.raises(TurnRefused, match="already answered"):  # refused before any event
        await turn(agent, None, ApprovalAnswer(proposal.id, approve=True))
    assert shop.cancelled == ["A1"]  # at most once


async def test_the_app_takes_the_scripted_model(tmp_path: Path) -> None:
    model = ScriptedModel(Reply.say("Hello from the script."))
    app = create_app(make_settings(tmp_path), model=model)
    async with app.test_app():
        client = app.test_client()
        ready: Any = await (await client.get("/health/readiness")).get_json()
        assert ready["checks"]["model"] == "ok"
        response = await client.post("/api/v1/chat", json={"session_id": "app", "message": "hi"})
        body = await response.get_json()
        assert response.status_code == 200, body
        assert body["message"] == "Hello from the script." and body["message_count"] == 2
        assert model.requests[0]["messages"][-1] == {"role": "user", "content": "hi"}
        # The app offers its real tools to whatever model it is given.
        offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
        assert {"get_current_time", "get_order", "cancel_order"} <= offered
    assert model.closed  # the app closes the model it was given, like its own
