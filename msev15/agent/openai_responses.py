"""The Responses API over the official openai client: OpenAI, Azure OpenAI and compatible servers.

The agent loop speaks Chat Completions messages; this client turns them into Responses input
items (assistant tool calls become `function_call` items, tool results `function_call_output`
items) and folds the streamed events (`response.output_text.delta`, the function-call argument
events, `response.completed`) back into the same `TextDelta`, `ToolCallRequest` and
`ModelFinish` the Chat Completions client yields. Requests are stateless (`store: false`): the
whole conversation goes with every call, as it does over Chat Completions.
"""

from __future__ import annotations

from typing import Any

import orjson

from msev15.agent.model import ModelEvent, ModelFinish, ToolCallRequest
from msev15.agent.openai_stream import OpenAIStreamModel, Retryable, error_text
from msev15.tracing import tracing_enabled

# Events whose data is read; the rest (created, in_progress, content parts, text done, and the
# large `response.completed`, which echoes the whole request) are recognised by their `event:`
# line alone and never parsed.
_READ = frozenset(
    {
        b"response.output_text.delta",
        b"response.refusal.delta",
        b"response.output_item.added",
        b"response.output_item.done",
        b"response.function_call_arguments.delta",
        b"response.function_call_arguments.done",
        b"response.incomplete",
        b"response.failed",
        b"error",
    }
)
_COMPLETED = b"response.completed"
_TEXT_DELTA = b"response.output_text.delta"
_ITEMS = frozenset({b"response.output_item.added", b"response.output_item.done"})
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


class OpenAIResponsesModel(OpenAIStreamModel):
    """The Responses API (`/responses`, streamed), parsed from the raw stream with orjson."""

    path = "/responses"

    _tools_in: list[dict[str, Any]] | None = None
    _tools_out: orjson.Fragment | None = None

    def request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model_name,
            "input": input_items(messages),
            "stream": True,
            "store": False,
        }
        if tools:
            request["tools"] = self._tools(tools)
        if self.temperature is not None:
            request["temperature"] = self.temperature
        return request

    def _tools(self, tools: list[dict[str, Any]]) -> orjson.Fragment:
        """The tool specs in Responses form, converted and encoded once per list: the registry hands out
        the same list until its tools change (then a new one), so every call of a turn reuses it."""
        if tools is not self._tools_in or self._tools_out is None:
            self._tools_out = orjson.Fragment(orjson.dumps([response_tool(tool) for tool in tools]))
            self._tools_in = tools
        return self._tools_out

    def reader(self) -> ResponsesReader:
        return ResponsesReader()


def input_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions messages as Responses input items, in order."""
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message["tool_call_id"],
                    "output": _text_of(message.get("content")),
                }
            )
            continue
        content = message.get("content")
        if content:
            items.append({"type": "message", "role": role, "content": _content(role, content)})
        for call in message.get("tool_calls") or ():
            function = call["function"]
            items.append(
                {
                    "type": "function_call",
                    "call_id": call["id"],
                    "name": function["name"],
                    "arguments": function.get("arguments") or "{}",
                }
            )
    return items


def response_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions tool spec as a Responses function tool.

    `strict` is spelled out: the Responses API defaults it to true, which demands schemas that list
    every property as required and forbid additional ones; Chat Completions defaults it to false.
    """
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return tool  # already in Responses form, or a built-in tool
    converted: dict[str, Any] = {"type": "function", "name": function["name"]}
    if "description" in function:
        converted["description"] = function["description"]
    converted["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
    converted["strict"] = bool(function.get("strict", False))
    return converted


def _content(role: str, content: Any) -> Any:
    if isinstance(content, str):
        return content
    kind = "output_text" if role == "assistant" else "input_text"
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append({"type": kind, "text": part.get("text", "")})
        else:
            parts.append(part)
    return parts


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


class ResponsesReader:
    """Response stream events folded into text, function calls and a finish reason."""

    __slots__ = ("calls", "event", "finish", "usage")

    def __init__(self) -> None:
        self.calls: dict[Any, dict[str, str]] = {}  # by output_index (item id when absent)
        self.event: bytes | None = None  # the `event:` line of the event being read
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}  # from the completed response

    def feed(self, lines: list[bytes], text: list[str]) -> bool:
        for line in lines:
            if line.startswith(b"data:"):
                event = self.event
                if event == _TEXT_DELTA:  # the hot path: one per streamed piece of text
                    delta = orjson.loads(line[5:]).get("delta")
                    if delta:
                        text.append(delta)
                    continue
                if event is not None and event not in _READ:
                    if event == _COMPLETED:
                        self.finish = "tool_calls" if self.calls else "stop"
                        # Parsed only for a trace: the event echoes the whole request.
                        self.usage = _usage(line[5:]) if tracing_enabled() else {}
                        return True
                    continue
                if event in _ITEMS and b'"function_call"' not in line:
                    continue  # a message item: its text came as deltas
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.finish = self.finish or ("tool_calls" if self.calls else "stop")
                    return True
                if data and self._event(orjson.loads(data), text):
                    return True
            elif line.startswith(b"event:"):
                self.event = line[6:].strip()
            elif len(line) < 2:  # the blank line that ends an event
                self.event = None
        return False

    def _event(self, event: dict[str, Any], text: list[str]) -> bool:
        """Fold one event; True when it ends the answer."""
        kind = event.get("type")
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            delta = event.get("delta")
            if delta:
                text.append(delta)
        elif kind == "response.function_call_arguments.delta":
            self._slot(event, None)["args"] += event.get("delta") or ""
        elif kind == "response.function_call_arguments.done":
            slot = self._slot(event, None)
            slot["args"] = event.get("arguments") or slot["args"]
            slot["name"] = event.get("name") or slot["name"]
        elif kind == "response.output_item.added" or kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                slot = self._slot(event, item.get("id"))
                slot["id"] = item.get("call_id") or slot["id"]
                slot["name"] = item.get("name") or slot["name"]
                slot["args"] = item.get("arguments") or slot["args"]
        elif kind == "response.completed":
            self.finish = "tool_calls" if self.calls else "stop"
            usage = (event.get("response") or {}).get("usage")
            self.usage = usage if isinstance(usage, dict) else {}
            return True
        elif kind == "response.incomplete":
            details = (event.get("response") or {}).get("incomplete_details") or {}
            reason = details.get("reason") or "incomplete"
            self.finish = _INCOMPLETE.get(reason, reason)
            return True
        elif kind == "response.failed":
            error = (event.get("response") or {}).get("error") or "the response failed"
            raise Retryable(f"model stream error: {error_text(error)}")
        elif kind == "error":
            raise Retryable(f"model stream error: {error_text(event.get('error') or event)}")
        return False

    def _slot(self, event: dict[str, Any], item_id: str | None) -> dict[str, str]:
        key = event.get("output_index")
        if key is None:
            key = item_id or event.get("item_id") or len(self.calls)
        slot = self.calls.get(key)
        if slot is None:
            slot = self.calls[key] = {"id": "", "name": "", "args": ""}
        return slot

    def end(self) -> list[ModelEvent]:
        if self.finish is None:
            raise Retryable("model stream ended before it finished")
        events: list[ModelEvent] = []
        for index, key in enumerate(sorted(self.calls, key=_order)):
            slot = self.calls[key]
            events.append(ToolCallRequest(slot["id"] or f"call_{index}", slot["name"], slot["args"] or "{}"))
        usage = self.usage
        events.append(
            ModelFinish(
                self.finish,
                input_tokens=_int(usage.get("input_tokens")),
                output_tokens=_int(usage.get("output_tokens")),
            )
        )
        return events


def _usage(data: bytes) -> dict[str, Any]:
    """The token usage of a `response.completed` event (one parse per model call, not per token)."""
    try:
        usage = (orjson.loads(data).get("response") or {}).get("usage")
    except orjson.JSONDecodeError:
        return {}
    return usage if isinstance(usage, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _order(key: Any) -> tuple[int, str]:
    return (key, "") if isinstance(key, int) else (1 << 30, str(key))
