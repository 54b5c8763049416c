"""The whole agent-loop suite (tests/test_agent_loop.py) again, over HTTP, once per model API.

Every test there that takes the `model` fixture runs here with `model` replaced by a real model
client (`OpenAIChatModel` or `OpenAIResponsesModel`) talking to the scripted OpenAI-compatible
server, which plays the same `Reply` scripts. The agent loop is the same for both; what this
proves is that each client turns the loop's Chat Completions messages into its API and back
without losing anything: the server hands every request back in Chat Completions form, and the
suite's exact assertions on what the model was sent hold for both.

Two differences from the in-process model are bridged, not hidden: text that arrives together in
one network read leaves the client as one delta, so it is cut back into the words the script sent
(the loop emits one token event per delta); and the client is built without retries, so a
scripted error reaches the loop as the in-process model reports it.
"""

from __future__ import annotations

import inspect
import re
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.test_agent_loop as suite
from msev15.agent.model import ModelEvent, TextDelta
from msev15.agent.openai_stream import OpenAIStreamModel
from msev15.agent.providers import create_model
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_agent_loop import agent, sessions, shop

__all__ = ["agent", "sessions", "shop"]

_WORDS = re.compile(r"\S+\s*|\s+")


class HttpScriptedModel:
    """`ScriptedModel`'s interface (push, script, requests) over a real client and the HTTP server."""

    provider = "scripted-http"

    def __init__(self, server: ScriptedOpenAI, client: OpenAIStreamModel) -> None:
        self.server = server
        self.client = client
        self.model_name = client.model_name

    @property
    def script(self) -> deque[Reply]:
        return self.server.script

    def push(self, *replies: Reply) -> None:
        self.server.push(*replies)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [{"messages": r["_messages"], "tools": r["_tools"]} for r in self.server.requests]

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        async for event in self.client.stream(messages, tools):
            if isinstance(event, TextDelta):
                for word in _WORDS.findall(event.text):
                    yield TextDelta(word)
            else:
                yield event

    async def check(self) -> str:
        return await self.client.check()

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture(params=["chat", "responses"])
async def model(
    request: pytest.FixtureRequest, tmp_path: Path, openai_server: ScriptedOpenAI
) -> AsyncIterator[HttpScriptedModel]:
    settings = make_settings(
        tmp_path,
        llm_provider="openai",
        openai_base_url=openai_server.base_url,
        model_api=request.param,
        model_max_retries=0,
        model_timeout_seconds=5.0,
    )
    client = create_model(settings)
    assert isinstance(client, OpenAIStreamModel)
    scripted = HttpScriptedModel(openai_server, client)
    yield scripted
    await scripted.close()
    paths = {r["_path"] for r in openai_server.requests}
    assert paths <= {"/v1/chat/completions"} if request.param == "chat" else paths <= {"/v1/responses"}


def _takes_model(test: object) -> bool:
    return callable(test) and "model" in inspect.signature(test).parameters


for _name, _test in list(vars(suite).items()):
    if _name.startswith("test_") and _takes_model(_test):
        globals()[_name] = _test


def test_the_whole_suite_is_here() -> None:
    taken = [name for name in vars(suite) if name.startswith("test_") and _takes_model(vars(suite)[name])]
    assert len(taken) >= 6 and all(name in globals() for name in taken)
