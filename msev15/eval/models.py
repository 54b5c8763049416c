"""The models around a trial: a counting wrapper for the agent's model, and the simulated customer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from msev15.agent.model import ModelClient, ModelEvent, TextDelta, ToolCallRequest
from msev15.eval.tasks import Task
from msev15.jsonio import dumps

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text; the counts are estimates
STOP = "###STOP###"  # τ-bench's word for "my goal is met (or cannot be)"


class CountingModel:
    """The agent's model, unchanged, with the tokens it reads and writes estimated (chars / 4).

    The ModelClient seam carries no usage figures, and the offline model has none, so every
    provider is counted the same way.
    """

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.model_name = inner.model_name
        self.tokens = 0

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        self.tokens += (len(dumps(messages)) + len(dumps(tools))) // CHARS_PER_TOKEN
        async for event in self.inner.stream(messages, tools):
            if isinstance(event, TextDelta):
                self.tokens += max(1, len(event.text) // CHARS_PER_TOKEN)
            elif isinstance(event, ToolCallRequest):
                self.tokens += max(1, len(event.arguments) // CHARS_PER_TOKEN)
            yield event

    async def check(self) -> str:
        return await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


def customer_instructions(task: Task) -> str:
    """The simulated customer's brief, written from the task (as τ-bench's user simulator gets it)."""
    who = []
    if task.customer.name:
        who.append(f"Your name is {task.customer.name}.")
    if task.customer.email:
        who.append(f"Your email address is {task.customer.email}.")
    return (
        "You are a customer of an online shop, chatting with its customer-service assistant. "
        f"{' '.join(who)} Your goal: {task.goal}\n"
        "Rules: write one short message at a time, as a customer types. Give details (order number, "
        "email, address) only when they are needed or asked for. Do not invent details that your goal "
        "does not give. When the assistant asks you to confirm an action that is what you want, reply "
        "exactly `yes`; reply `no` to an action you do not want. When your goal is met, or cannot be "
        f"met, reply with {STOP} alone."
    )


class SimulatedCustomer:
    """An LLM plays the customer from the task's goal; the conversation ends at STOP or `max_turns`."""

    def __init__(self, model: ModelClient, task: Task, max_turns: int = 12) -> None:
        self.model = model
        self.max_turns = max_turns
        # Seen from the customer's side: the assistant's answers are the "user" messages here.
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": customer_instructions(task)}]
        self.turns = 0

    async def next_message(self, answer: str | None) -> str | None:
        """The customer's next message after the assistant's `answer`, or None when done."""
        if self.turns >= self.max_turns:
            return None
        self.messages.append({"role": "user", "content": answer or "Hello! How can I help you today?"})
        parts = [e.text async for e in self.model.stream(self.messages, []) if isinstance(e, TextDelta)]
        text = "".join(parts).strip()
        self.messages.append({"role": "assistant", "content": text})
        if not text or STOP in text:
            return None
        self.turns += 1
        return text
