"""Earlier turns reach the model with their tool calls and results, in the OpenAI form, within the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from msev15 import create_app
from msev15.agent.approvals import NO_WORDS, YES_WORDS, typed_answer
from msev15.agent.history import STORED_RESULT_CHARS, call_record, model_history, size
from msev15.stores.sessions import Message
from msev15.stores.sessions.sqlite import SqliteSessionStore
from msev15.tools.registry import ToolResult
from tests.conftest import make_settings
from tests.scripted_model import Reply, ScriptedModel

ALICE = "alice@example.com"
LOOKUP = {"order_id": "ORD-1002", "customer_email": ALICE}


async def test_turn_two_answers_from_turn_ones_get_order_without_calling_it_again(tmp_path: Path) -> None:
    model = ScriptedModel(
        Reply.call("get_order", LOOKUP),
        Reply.say("Order ORD-1002 has shipped."),
        Reply.say("It shipped, so it should arrive within 3-5 business days."),
    )
    app = create_app(make_settings(tmp_path), model=model)
    async with app.test_app():
        client = app.test_client()
        first = await (
            await client.post(
                "/api/v1/chat", json={"session_id": "h", "message": f"Where is ORD-1002? {ALICE}"}
            )
        ).get_json()
        [call] = first["tool_calls"]
        second = await (
            await client.post("/api/v1/chat", json={"session_id": "h", "message": "When will it arrive?"})
        ).get_json()
        assert second["tool_calls"] == [] and "3-5 business days" in second["message"]
        history = await (await client.get("/api/v1/sessions/h/history")).get_json()
        audit = await (await client.get("/api/v1/audit?session_id=h")).get_json()

    sent = model.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": "get_order", "arguments": orjson.dumps(LOOKUP).decode()},
            }
        ],
    }
    assert sent[3]["tool_call_id"] == call["id"]
    order = orjson.loads(sent[3]["content"])
    assert order["order_id"] == "ORD-1002" and order["status"] == "shipped"
    assert sent[4] == {"role": "assistant", "content": "Order ORD-1002 has shipped."}
    assert sent[5] == {"role": "user", "content": "When will it arrive?"}
    # get_order ran once, in turn one; turn two read its result from the history.
    assert [e["tool"] for e in audit["events"]] == ["get_order"]
    assert len(model.requests) == 3
    # The public history keeps its shape: the results stay inside the service.
    assert history["messages"][1]["tool_calls"] == [
        {"id": call["id"], "name": "get_order", "arguments": LOOKUP, "ok": True}
    ]


def _turn(n: int, result_chars: int = 100, calls: int = 1) -> list[Message]:
    records = [
        call_record(f"c{n}_{i}", "get_order", {"order_id": f"ORD-{n}"}, ToolResult(True, "r" * result_chars))
        for i in range(calls)
    ]
    return [Message("user", f"question {n}", 0.0), Message("assistant", f"answer {n}", 0.0, records)]


def _balanced(messages: list[dict[str, Any]]) -> None:
    """Every tool message answers a call sent before it, and every call gets its answer."""
    open_calls: set[str] = set()
    for message in messages:
        for call in message.get("tool_calls") or ():
            open_calls.add(call["id"])
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_calls
            open_calls.remove(message["tool_call_id"])
    assert open_calls == set()


def test_the_oldest_whole_turns_are_dropped_first() -> None:
    stored = [m for n in range(10) for m in _turn(n, result_chars=300, calls=2)]
    whole = model_history(stored, 10**6)
    assert len(whole) == 10 * 5 and size(whole) > 2000
    for budget in range(0, size(whole) + 1, 97):
        window = model_history(stored, budget)
        assert size(window) <= budget
        _balanced(window)
        assert not window or window[0]["role"] == "user"
        assert window == whole[len(whole) - len(window) :]  # a suffix of whole turns
        assert len(window) % 5 == 0


def test_a_window_never_opens_on_an_answer_whose_question_was_dropped() -> None:
    decided = Message(
        "assistant",
        "Done: order ORD-1 is cancelled.",
        0.0,
        [call_record("apr_1", "cancel_order", {"order_id": "ORD-1"}, ToolResult(True, "{}"), "approved")],
    )
    stored = [*_turn(0), decided, *_turn(1)]
    whole = model_history(stored, 10**6)
    turn = ["user", "assistant", "tool", "assistant"]
    assert [m["role"] for m in whole] == [*turn, "assistant", "tool", "assistant", *turn]
    # Room for the last turn and the approval turn, but not for the question it answered.
    budget = size(whole[-4:]) + size(whole[4:7])
    assert model_history(stored, budget) == whole[-4:]


def test_records_without_results_still_load_and_go_as_text() -> None:
    old = Message.from_record(
        {
            "role": "assistant",
            "content": "It has shipped.",
            "timestamp": 1.0,
            "tool_calls": [{"id": "c1", "name": "get_order", "arguments": {}, "ok": True}],
        }
    )
    stored = [Message("user", "where?", 0.0), old]
    assert model_history(stored, 10**6) == [
        {"role": "user", "content": "where?"},
        {"role": "assistant", "content": "It has shipped."},
    ]
    assert old.to_api()["tool_calls"] == [{"id": "c1", "name": "get_order", "arguments": {}, "ok": True}]


def test_stored_results_are_clipped() -> None:
    record = call_record("c", "search_products", {}, ToolResult(True, "x" * 50_000))
    assert len(record["result"]) < STORED_RESULT_CHARS + 20 and record["result"].endswith("[clipped]")
    refused = call_record("c", "cancel_order", {}, ToolResult(False, None, "order ORD-1 is shipped"))
    assert orjson.loads(refused["result"]) == {"ok": False, "error": "order ORD-1 is shipped"}


async def test_results_survive_the_sqlite_store_and_old_records_load(tmp_path: Path) -> None:
    store = await SqliteSessionStore.open(tmp_path / "s.db")
    try:
        with_result = _turn(1)
        without = [
            Message("user", "q", 0.0),
            Message("assistant", "a", 0.0, [{"id": "x", "name": "n", "ok": True}]),
        ]
        await store.save_turn("t", "s", without)
        await store.save_turn("t", "s", with_result)
        session = await store.get("t", "s")
        assert session is not None
        assert session.messages[1].tool_calls == [{"id": "x", "name": "n", "ok": True}]
        assert session.messages[3].tool_calls == with_result[1].tool_calls
        sent = model_history(session.messages, 10**6)
        assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    finally:
        await store.close()


# The typed answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("word", YES_WORDS)
def test_every_yes_word_approves(word: str) -> None:
    assert typed_answer(word) is True
    assert typed_answer(f"  {word.upper()}!! ") is True
    assert typed_answer(f"{word.capitalize()}.") is True


@pytest.mark.parametrize("word", NO_WORDS)
def test_every_no_word_declines(word: str) -> None:
    assert typed_answer(word) is False
    assert typed_answer(f" {word.title()}. ") is False


def test_the_lists_hold_at_least_api_mds_words() -> None:
    assert {
        "yes", "y", "yes please", "yep", "sure", "ok", "okay", "confirm", "confirmed", "approve", "go ahead",
        "do it", "please do",
    } <= set(YES_WORDS)  # fmt: skip
    assert {"no", "n", "nope", "decline", "no thanks", "don't", "do not", "stop"} <= set(NO_WORDS)
    assert not set(YES_WORDS) & set(NO_WORDS)


@pytest.mark.parametrize(
    "text",
    [
        "yes but change the address first",
        "no idea, what is my order status?",
        "ok, and what about ORD-1002?",
        "yes?",
        "cancel",
        "confirm ORD-1001",
        "sure thing, but not today",
        "",
        "quiero cancelar mi pedido ORD-1004",
    ],
)
def test_anything_else_is_neither(text: str) -> None:
    assert typed_answer(text) is None


def test_typographic_apostrophes_and_commas() -> None:
    assert typed_answer("Don\u2019t") is False
    assert typed_answer("Yes, please!") is True
    assert typed_answer("no, thanks.") is False
