"""Chat Completions over the official openai client: OpenAI-compatible servers and Azure OpenAI."""

from __future__ import annotations

from typing import Any

import orjson

from msev15.agent.model import ModelEvent, ModelFinish, ToolCallRequest
from msev15.agent.openai_stream import OpenAIStreamModel, Retryable, error_text


class OpenAIChatModel(OpenAIStreamModel):
    """Chat Completions (`/chat/completions`, streamed), parsed from the raw stream with orjson."""

    path = "/chat/completions"

    def request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model_name, "messages": messages, "stream": True}
        if tools:
            request["tools"] = tools
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    def reader(self) -> ChatReader:
        return ChatReader()


class ChatReader:
    """Completion chunks folded into text, tool calls (assembled from their pieces) and a finish reason."""

    __slots__ = ("calls", "finish", "done", "usage")

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, str]] = {}
        self.finish: str | None = None
        self.done = False  # saw [DONE]
        self.usage: dict[str, Any] | None = None  # the last chunk's, when the server sends it

    def feed(self, lines: list[bytes], text: list[str]) -> bool:
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                return True
            if data:
                self.finish = self._chunk(orjson.loads(data), text) or self.finish
        return False

    def _chunk(self, chunk: dict[str, Any], text: list[str]) -> str | None:
        """Fold one completion chunk into the text and tool-call pieces; returns its finish reason."""
        if chunk.get("error"):
            raise Retryable(f"model stream error: {error_text(chunk['error'])}")
        finish = None
        calls = self.calls
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                text.append(content)
            for part in delta.get("tool_calls") or ():
                slot = calls.setdefault(part.get("index", len(calls)), {"id": "", "name": "", "args": ""})
                if part.get("id"):
                    slot["id"] = part["id"]
                function = part.get("function") or {}
                if function.get("name"):
                    slot["name"] += function["name"]
                if function.get("arguments"):
                    slot["args"] += function["arguments"]
            finish = choice.get("finish_reason") or finish
        return finish

    def end(self) -> list[ModelEvent]:
        if not self.done and self.finish is None:
            raise Retryable("model stream ended before it finished")
        events: list[ModelEvent] = []
        for index in sorted(self.calls):
            slot = self.calls[index]
            events.append(ToolCallRequest(slot["id"] or f"call_{index}", slot["name"], slot["args"]))
        usage = self.usage or {}
        events.append(
            ModelFinish(
                self.finish or "stop",
                input_tokens=_count(usage.get("prompt_tokens")),
                output_tokens=_count(usage.get("completion_tokens")),
            )
        )
        return events


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) else None
