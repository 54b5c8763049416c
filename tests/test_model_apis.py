"""Both model clients against the scripted server: Chat Completions and the Responses API alike.

Streaming, tool calls, the retry rules (only before the first token, `Retry-After` honoured),
429/500/death mid-stream, and what the Responses client sends: input items for the whole
conversation (assistant tool calls and tool results included), non-strict function tools, no
stored state.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from msev15.agent.model import ModelFinish, ModelUnavailable, TextDelta, ToolCallRequest
from msev15.agent.openai_chat import OpenAIChatModel
from msev15.agent.openai_responses import OpenAIResponsesModel, ResponsesReader, input_items
from msev15.agent.openai_stream import OpenAIStreamModel
from msev15.agent.providers import create_model
from tests.conftest import MakeModelSettings
from tests.openai_server import Reply, ScriptedOpenAI, chat_messages, running_openai_server

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look an order up.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]
PATH = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}


@pytest.fixture(params=["chat", "responses"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["first call", "later call"])
def later(request: pytest.FixtureRequest) -> bool:
    """Whether the scenario runs on a later call: one the client's first request is resent for."""
    return request.param == "later call"


def client_for(make_model_settings: MakeModelSettings, api: str, **overrides: Any) -> OpenAIStreamModel:
    model = create_model(make_model_settings(model_api=api, **overrides))
    assert isinstance(model, OpenAIResponsesModel if api == "responses" else OpenAIChatModel)
    return model


async def warmed(model: OpenAIStreamModel, server: ScriptedOpenAI, later: bool) -> OpenAIStreamModel:
    """With `later`, one successful call first (then forgotten by the server's request log)."""
    if later:
        server.push(Reply.say("warm"))
        assert texts(await collect(model)) == ["warm"]
        server.requests.clear()
    return model


async def collect(model: OpenAIStreamModel, messages: list[dict[str, Any]] = MESSAGES) -> list[object]:
    return [event async for event in model.stream(messages, TOOLS)]


def texts(events: list[object]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


async def test_text_streams_in_pieces(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    openai_server.push(Reply.say("a b c d e", words_per_chunk=2, delay=0.02))
    model = client_for(make_model_settings, api)
    events = await collect(model)
    assert texts(events) == ["a b ", "c d ", "e"]
    assert events[-1] == ModelFinish("stop")
    [sent] = openai_server.requests
    assert sent["_path"] == PATH[api] and sent["stream"] is True and sent["model"] == "gpt-4o"
    assert sent["_headers"]["authorization"] == "Bearer test-key"
    await model.close()


async def test_tool_calls_are_assembled_from_their_pieces(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    openai_server.push(Reply.calls(("get_order", {"order_id": "ORD-1", "note": "é"}), ("x", {})))
    model = client_for(make_model_settings, api)
    events = await collect(model)
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.name, orjson.loads(c.arguments)) for c in calls] == [
        ("get_order", {"order_id": "ORD-1", "note": "é"}),
        ("x", {}),
    ]
    assert len({c.id for c in calls}) == 2
    assert events[-1] == ModelFinish("tool_calls")
    await model.close()


def on_the_wire(sent: dict[str, Any]) -> tuple[Any, ...]:
    """A recorded request as the server saw it, but for its body and length."""
    headers = {k: v for k, v in sent["_headers"].items() if k != "content-length"}
    return sent["_path"], sent["_query"], headers


async def test_later_calls_go_out_exactly_as_the_client_built_the_first(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    """With an API key the client's request is built once and sent again with each new body."""
    model = client_for(make_model_settings, api)
    openai_server.push(Reply.say("one"), Reply.say("two"), Reply.say("three"))
    for expected, messages in (
        ("one", MESSAGES),
        ("two", [*MESSAGES, {"role": "user", "content": "é" * 500}]),
    ):
        assert texts(await collect(model, messages)) == [expected]
    first, second = openai_server.requests
    assert on_the_wire(second) == on_the_wire(first)
    assert first["_headers"]["authorization"] == "Bearer test-key"
    assert int(second["_headers"]["content-length"]) > int(first["_headers"]["content-length"]) + 500
    assert second["_messages"][-1]["content"] == "é" * 500  # the new body, whole
    await model.close()


async def test_a_later_call_to_a_server_that_went_away_is_unreachable(
    make_model_settings: MakeModelSettings, api: str
) -> None:
    async with running_openai_server() as gone:
        model = client_for(make_model_settings, api, openai_base_url=gone.base_url, model_max_retries=0)
        await warmed(model, gone, True)
    with pytest.raises(ModelUnavailable, match="unreachable"):  # as the client's own call says it
        await collect(model)
    await model.close()


async def test_429_and_500_are_retried_and_retry_after_is_honoured(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str, later: bool
) -> None:
    model = await warmed(
        client_for(make_model_settings, api, model_retry_base_seconds=0.001), openai_server, later
    )
    openai_server.push(Reply(status=429, retry_after=0.4), Reply.error(500), Reply.say("fine"))
    started = time.monotonic()
    events = await collect(model)
    assert texts(events) == ["fine"]
    assert len(openai_server.requests) == 3
    assert time.monotonic() - started >= 0.4  # the server's Retry-After, not the 1 ms backoff
    await model.close()


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str, later: bool, status: int
) -> None:
    model = await warmed(client_for(make_model_settings, api), openai_server, later)
    openai_server.push(Reply.error(status, times=-1))
    with pytest.raises(ModelUnavailable, match=str(status)):
        await collect(model)
    assert len(openai_server.requests) == 1
    await model.close()


async def test_retries_give_up_after_the_allowed_number(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str, later: bool
) -> None:
    model = await warmed(
        client_for(make_model_settings, api, model_max_retries=2, model_retry_base_seconds=0.001),
        openai_server,
        later,
    )
    openai_server.push(Reply.error(503, times=-1))
    with pytest.raises(ModelUnavailable, match="503"):
        await collect(model)
    assert len(openai_server.requests) == 3
    await model.close()


async def test_death_before_the_first_token_is_retried(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str, later: bool
) -> None:
    model = await warmed(
        client_for(make_model_settings, api, model_retry_base_seconds=0.001), openai_server, later
    )
    openai_server.push(Reply(text="", die_after=0), Reply.say("second try"))
    assert "".join(texts(await collect(model))) == "second try"
    assert len(openai_server.requests) == 2
    await model.close()


async def test_death_mid_stream_is_not_retried(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    openai_server.push(Reply.say("one two three four", die_after=2), Reply.say("never"))
    model = client_for(make_model_settings, api, model_retry_base_seconds=0.001)
    seen: list[str] = []
    with pytest.raises(ModelUnavailable, match="broke off"):
        async for event in model.stream(MESSAGES, TOOLS):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert "".join(seen) == "one two "
    assert len(openai_server.requests) == 1  # text was already out: a retry would repeat it
    await model.close()


async def test_lines_cut_across_network_reads(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    openai_server.push(
        Reply(text="héllo wörld, every byte arrives", fragment=7),
        Reply(tool_calls=[("get_current_time", {"zone": "UTC"})], fragment=5),
    )
    model = client_for(make_model_settings, api)
    assert "".join(texts(await collect(model))) == "héllo wörld, every byte arrives"
    events = await collect(model)
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCallRequest)] == [
        ("get_current_time", '{"zone":"UTC"}')
    ]
    await model.close()


async def test_readiness_and_close(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, api: str
) -> None:
    model = client_for(make_model_settings, api)
    assert await model.check() == "ok"
    assert model.auth.description == "api key (OPENAI_API_KEY)"
    await model.close()


# The Responses client on its own ------------------------------------------------------------

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You help."},
    {"role": "user", "content": "where is A1?"},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_order", "arguments": '{"order_id":"A1"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_order", "arguments": '{"order_id":"A2"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status":"shipped"}'},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"status":"open"}'},
    {"role": "assistant", "content": "A1 has shipped."},
    {"role": "user", "content": "thanks"},
]


def test_chat_messages_become_input_items_and_back() -> None:
    items = input_items(HISTORY)
    assert [i["type"] for i in items] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
        "message",
        "message",
    ]
    assert items[3] == {
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_order",
        "arguments": '{"order_id":"A1"}',
    }
    assert items[5] == {"type": "function_call_output", "call_id": "call_1", "output": '{"status":"shipped"}'}
    assert chat_messages(items) == HISTORY  # nothing lost on the way


async def test_the_responses_request(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say("You're welcome."))
    model = client_for(make_model_settings, "responses")
    assert "".join(texts(await collect(model, HISTORY))) == "You're welcome."
    [sent] = openai_server.requests
    assert sent["store"] is False and sent["temperature"] == 0.2 and "messages" not in sent
    assert sent["tools"] == [
        {
            "type": "function",
            "name": "get_order",
            "description": "Look an order up.",
            "parameters": TOOLS[0]["function"]["parameters"],
            "strict": False,  # the Responses default is strict, which these schemas are not written for
        }
    ]
    assert sent["_messages"] == HISTORY
    await model.close()


async def test_a_failed_response_before_any_text_is_retried(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply(fail="overloaded"), Reply.say("ok now"))
    model = client_for(make_model_settings, "responses", model_retry_base_seconds=0.001)
    assert "".join(texts(await collect(model))) == "ok now"
    openai_server.push(Reply(text="half said", fail="overloaded"))
    with pytest.raises(ModelUnavailable, match="overloaded"):
        await collect(model)
    await model.close()


def _feed(raw: bytes) -> list[object]:
    reader = ResponsesReader()
    text: list[str] = []
    done = reader.feed(raw.split(b"\n"), text)
    return [*text, done, *reader.end()]


def test_events_without_event_lines_and_incomplete_answers() -> None:
    # Servers that send only `data:` lines are read by each event's `type`.
    raw = b"".join(
        b"data: " + orjson.dumps(e) + b"\n\n"
        for e in (
            {"type": "response.created", "response": {}},
            {"type": "response.output_text.delta", "delta": "cut "},
            {
                "type": "response.incomplete",
                "response": {"incomplete_details": {"reason": "max_output_tokens"}},
            },
        )
    )
    assert _feed(raw) == ["cut ", True, ModelFinish("length")]
    refusal = b'event: response.refusal.delta\ndata: {"type":"response.refusal.delta","delta":"I cannot"}\n\n'
    completed = b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n'
    assert _feed(refusal + completed) == ["I cannot", True, ModelFinish("stop")]
    with pytest.raises(Exception, match="ended before it finished"):
        _feed(refusal)
    error = b'event: error\ndata: {"type":"error","code":"server_error","message":"boom"}\n\n'
    with pytest.raises(Exception, match="boom"):
        _feed(error)
