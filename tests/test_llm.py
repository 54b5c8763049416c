"""The OpenAI-compatible client against a real scripted server: streaming, tools, retries, faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.agent.model import ModelFinish, ModelUnavailable, TextDelta, ToolCallRequest
from msev15.agent.offline.model import OfflineModel
from msev15.agent.openai_chat import OpenAIChatModel
from msev15.agent.providers import create_model
from msev15.settings import Settings
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_api import sse_events

MESSAGES = [{"role": "user", "content": "hi"}]


def model_for(settings: Settings) -> OpenAIChatModel:
    model = create_model(settings)
    assert isinstance(model, OpenAIChatModel)
    return model


async def collect(model: OpenAIChatModel) -> list[object]:
    return [event async for event in model.stream(MESSAGES, [])]


async def test_streamed_text_in_pieces(model_settings: Settings, openai_server: ScriptedOpenAI) -> None:
    # Pieces 20 ms apart arrive in separate network reads; what arrives together leaves as one delta.
    openai_server.push(Reply.say("a b c d e", words_per_chunk=2, delay=0.02))
    model = model_for(model_settings)
    events = await collect(model)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a b ", "c d ", "e"]
    assert events[-1] == ModelFinish("stop")
    request = openai_server.requests[0]
    assert request["stream"] is True and request["model"] == "gpt-4o"
    assert request["_headers"]["authorization"] == "Bearer test-key"
    assert "tools" not in request  # none offered, none sent
    await model.close()


async def test_tool_calls_assembled_from_pieces(
    model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply.calls(("get_order", {"order_id": "ORD-1", "customer_email": "a@b.c"}), ("x", {}))
    )
    model = model_for(model_settings)
    events = await collect(model)
    calls = [e for e in events if isinstance(e, ToolCallRequest)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("get_order", '{"order_id":"ORD-1","customer_email":"a@b.c"}'),
        ("x", "{}"),
    ]
    assert calls[0].id != calls[1].id
    assert events[-1] == ModelFinish("tool_calls")
    await model.close()


async def test_429_then_success_is_retried(model_settings: Settings, openai_server: ScriptedOpenAI) -> None:
    openai_server.push(Reply.error(429), Reply.error(503), Reply.say("fine"))
    model = model_for(model_settings)
    events = await collect(model)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["fine"]
    assert len(openai_server.requests) == 3
    await model.close()


@pytest.mark.parametrize("status", [400, 401, 404])
async def test_client_errors_are_not_retried(
    model_settings: Settings, openai_server: ScriptedOpenAI, status: int
) -> None:
    openai_server.push(Reply.error(status, times=-1))
    model = model_for(model_settings)
    with pytest.raises(ModelUnavailable, match=str(status)):
        await collect(model)
    assert len(openai_server.requests) == 1
    await model.close()


async def test_hang_past_timeout_then_unavailable(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    settings = make_settings(
        tmp_path,
        llm_provider="openai",
        openai_base_url=openai_server.base_url,
        model_timeout_seconds=0.2,
        model_max_retries=1,
    )
    openai_server.push(Reply(text="late", hang=1.0, times=-1))
    model = model_for(settings)
    with pytest.raises(ModelUnavailable, match="timed out"):
        await collect(model)
    assert len(openai_server.requests) == 2
    await model.close()


async def test_stream_dying_before_output_is_retried(
    model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply(text="", die_after=0), Reply.say("second try"))
    model = model_for(model_settings)
    events = await collect(model)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "second try"
    await model.close()


async def test_stream_dying_halfway_ends_turn_with_error(
    model_client: TestClientProtocol, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.say("one two three four five", die_after=2))
    response = await model_client.post("/api/v1/chat/stream", json={"session_id": "d", "message": "go"})
    events = sse_events(await response.get_data())
    assert {e["type"] for e in events[:-1]} == {"token"} and events[-1]["type"] == "error"
    assert "".join(e["content"] for e in events[:-1]) == "one two "  # tokens may be coalesced
    assert events[-1]["code"] == "unavailable"
    assert len(openai_server.requests) == 1  # text was already shown: not retried
    history = await (await model_client.get("/api/v1/sessions/d/history")).get_json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][1]["content"] == "one two "
    assert history["messages"][1]["interrupted"] is True
    # The session stays usable.
    openai_server.push(Reply.say("recovered"))
    body = await (
        await model_client.post("/api/v1/chat", json={"session_id": "d", "message": "again"})
    ).get_json()
    assert body["message"] == "recovered" and body["message_count"] == 4


async def test_azure_client_uses_deployment_path(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    origin = openai_server.base_url.removesuffix("/v1")
    settings = make_settings(
        tmp_path,
        llm_provider="auto",
        azure_openai_api_key="azure-secret",
        azure_openai_endpoint=origin,
        azure_openai_responses_deployment_name="shop-gpt",
    )
    assert settings.model_provider == "azure"
    openai_server.push(Reply.say("from azure"))
    model = model_for(settings)
    assert model.provider == "azure"
    events = await collect(model)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "from azure"
    request = openai_server.requests[0]
    assert request["_path"] == "/openai/deployments/shop-gpt/chat/completions"
    assert request["_headers"]["api-key"] == "azure-secret"
    await model.close()


def test_model_selection_rules(tmp_path: Path) -> None:
    assert make_settings(tmp_path, llm_provider="auto").model_provider == "offline"
    assert isinstance(create_model(make_settings(tmp_path, llm_provider="auto")), OfflineModel)
    assert make_settings(tmp_path, llm_provider="auto", openai_api_key="k").model_provider == "openai"
    assert (
        make_settings(tmp_path, llm_provider="auto", openai_base_url="http://x/v1").model_provider == "openai"
    )
    project = make_settings(
        tmp_path,
        llm_provider="auto",
        openai_api_key="k",
        azure_openai_api_key="a",
        azure_ai_project_endpoint="https://res.services.ai.azure.com/api/projects/p",
    )
    assert project.model_provider == "azure"  # Azure wins when both are set
    assert make_settings(tmp_path, llm_provider="auto", azure_openai_api_key="a").model_provider == "offline"
    assert make_settings(tmp_path, llm_provider="offline", openai_api_key="k").model_provider == "offline"


async def test_model_turn_runs_under_the_app(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    settings = make_settings(tmp_path, llm_provider="openai", openai_base_url=openai_server.base_url)
    app = create_app(settings)
    async with app.test_app():
        body = await (
            await app.test_client().post("/api/v1/chat", json={"session_id": "x", "message": "yo"})
        ).get_json()
        assert body["message"] == "Echo: yo"


async def test_lines_cut_across_network_reads(
    model_settings: Settings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(
        Reply(text="héllo wörld, every byte arrives", fragment=7),
        Reply(tool_calls=[("get_current_time", {"zone": "UTC"})], fragment=5),
    )
    model = model_for(model_settings)
    events = await collect(model)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "héllo wörld, every byte arrives"
    assert events[-1] == ModelFinish("stop")
    events = await collect(model)
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCallRequest)] == [
        ("get_current_time", '{"zone":"UTC"}')
    ]
    await model.close()
