"""The ModelClient seam: what the agent loop needs from any chat model, and what it gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str  # the raw JSON text the model produced
    type: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ModelFinish:
    reason: str
    type: Literal["finish"] = "finish"
    input_tokens: int | None = None  # token usage, where the API reports it
    output_tokens: int | None = None


ModelEvent = TextDelta | ToolCallRequest | ModelFinish


class ModelUnavailable(Exception):
    """The model could not be reached or failed after the allowed retries.

    `kind` is a short fixed word for metrics and traces (timeout, unreachable, auth, ...).
    """

    def __init__(self, message: str, kind: str = "unavailable") -> None:
        super().__init__(message)
        self.kind = kind


class ModelClient(Protocol):
    """A chat model that streams text and tool calls.

    Args:
        messages: Chat Completions messages (system, user, assistant with tool_calls, tool).
        tools: Chat Completions `tools` entries; empty means none are offered.
    """

    provider: str
    model_name: str

    def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]: ...

    async def check(self) -> str:
        """ "ok" or a short reason; used by readiness, so it must be quick."""
        ...

    async def close(self) -> None: ...
