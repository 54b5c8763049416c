"""An in-process ModelClient that plays scripted replies: the twin of tests/openai_server.py's ScriptedOpenAI.

It takes the same `Reply` (say / call / calls / error) and records what the agent sent it, but skips
HTTP and the `openai` client, so agent-loop tests are fast and exact. Pass it as
`Agent(ScriptedModel(...), ...)` or `create_app(settings, model=ScriptedModel(...))`. Keep the HTTP
server for tests of the real model client.

How a Reply plays here:
    text, words_per_chunk   TextDelta events, word by word, exactly as the HTTP server chunks them
    tool_calls              ToolCallRequest events (id, name, arguments as JSON text), after the text
    status != 200           ModelUnavailable before any event (what the client raises once retries are spent)
    die_after=n             ModelUnavailable after n text pieces (the stream breaks off mid-answer)
    hang, delay             seconds before the first event / between text pieces
    times                   how many calls the reply answers (< 0: every call from then on)
With nothing scripted it echoes the last user message, like the HTTP server.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson

from msev15.agent.model import ModelEvent, ModelFinish, ModelUnavailable, TextDelta, ToolCallRequest
from tests.openai_server import Reply

__all__ = ["Reply", "ScriptedModel"]


class ScriptedModel:
    """A `ModelClient` (msev15/agent/model.py) that answers from a queue of `Reply`s."""

    provider = "scripted"
    model_name = "scripted-model"

    def __init__(self, *replies: Reply) -> None:
        self.script: deque[Reply] = deque(replies)
        self.requests: list[dict[str, Any]] = []  # {"messages": [...], "tools": [...]} per call, as sent
        self.health = "ok"  # what check() answers; set a reason to make readiness fail
        self.closed = False
        self._calls = itertools.count(1)

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next(self, messages: list[dict[str, Any]]) -> Reply:
        if self.script:
            reply = self.script[0]
            if reply.times > 0:
                reply.times -= 1
                if reply.times == 0:
                    self.script.popleft()
            return reply
        last = next((m.get("content") or "" for m in reversed(messages) if m["role"] == "user"), "")
        return Reply.say(f"Echo: {last}")

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        # A snapshot: the agent goes on appending to its list after the call.
        self.requests.append({"messages": copy.deepcopy(messages), "tools": copy.deepcopy(tools)})
        call = next(self._calls)
        reply = self._next(messages)
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.status != 200:
            raise ModelUnavailable(f"scripted {reply.status}")
        sent = 0
        words = reply.text.split(" ") if reply.text else []
        for start in range(0, len(words), reply.words_per_chunk):
            if reply.die_after is not None and sent >= reply.die_after:
                raise ModelUnavailable("scripted stream death")
            if reply.delay and sent:
                await asyncio.sleep(reply.delay)
            piece = " ".join(words[start : start + reply.words_per_chunk])
            if start + reply.words_per_chunk < len(words):
                piece += " "
            yield TextDelta(piece)
            sent += 1
        for index, (name, arguments) in enumerate(reply.tool_calls):
            text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            yield ToolCallRequest(f"call_{call}_{index}", name, text)
        if reply.die_after is not None:
            raise ModelUnavailable("scripted stream death")
        yield ModelFinish("tool_calls" if reply.tool_calls else "stop")

    async def check(self) -> str:
        return self.health

    async def close(self) -> None:
        self.closed = True
