"""The built-in offline model (placeholder until the full offline model lands)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .llm import ModelEvent, ModelFinish, TextDelta

HELP_TEXT = (
    "[offline model] I am the built-in offline assistant; no language model is configured. "
    "Set OPENAI_BASE_URL or OPENAI_API_KEY to use a real model."
)


class OfflineModel:
    """Deterministic, no network: answers with a fixed, clearly labelled help text."""

    provider = "offline"
    model_name = "offline"

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        for word in HELP_TEXT.split(" "):
            yield TextDelta(word + " ")
        yield ModelFinish("stop")

    async def check(self) -> str:
        return "ok"

    async def close(self) -> None:
        return None
