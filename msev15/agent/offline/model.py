"""The built-in offline model: deterministic and network-free, yet able to use the shop's real tools."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from msev15.agent.approvals import DECLINED, EXPIRED, typed_answer
from msev15.agent.model import ModelEvent, ModelFinish, TextDelta, ToolCallRequest
from msev15.agent.offline.intents import Understanding, understand
from msev15.agent.offline.wording import (
    NOTE,
    ToolOutcome,
    ask,
    not_confirmed,
    preface,
    small_talk,
    unavailable,
    word_outcome,
)
from msev15.jsonio import dumps, loads

log = logging.getLogger(__name__)

# Slot names of the intent table → argument names of API.md's tools.
_ARGUMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "get_order": (("order_id", "order_id"), ("customer_email", "email")),
    "find_customer_orders": (("customer_email", "email"),),
    "cancel_order": (("order_id", "order_id"), ("customer_email", "email"), ("reason", "reason")),
    "update_shipping_address": (
        ("order_id", "order_id"),
        ("customer_email", "email"),
        ("shipping_address", "address"),
    ),
    "request_return": (("order_id", "order_id"), ("customer_email", "email"), ("reason", "reason")),
    "send_order_confirmation": (("order_id", "order_id"), ("customer_email", "email")),
    "search_products": (("query", "query"),),
    "get_product": (("sku", "sku"),),
    "get_policy": (("topic", "topic"),),
    "search_faq": (("query", "query"),),
}


@dataclass(slots=True)
class Reply:
    """What one model round says, and the tool calls it makes after saying it."""

    text: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class OfflineModel:
    """A ModelClient that reads the conversation with an intent table instead of a network model."""

    provider = "offline"
    model_name = "offline"

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        reply = respond(messages, tools)
        for piece in chunks(reply.text):
            yield TextDelta(piece)
            await asyncio.sleep(0)  # let other streams run, as a network model would
        for name, arguments in reply.calls:
            yield ToolCallRequest(f"call_{uuid.uuid4().hex[:24]}", name, dumps(arguments))
        yield ModelFinish("tool_calls" if reply.calls else "stop")

    async def check(self) -> str:
        return "ok"

    async def close(self) -> None:
        return None


def chunks(text: str) -> list[str]:
    """Word-sized pieces that join back to the exact text, so the answer streams like a real model's."""
    return re.findall(r"\s+|\S+\s*", text)


def respond(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
    """The next round: word the tool results of this turn, or act on the customer's newest message."""
    try:
        reply = _respond(messages, _tool_names(tools))
    except Exception:  # a wording bug must never cost the customer their answer
        log.exception("offline model failed to word a reply")
        reply = Reply("Sorry, something went wrong on my side while answering. Please try again.")
    if not _spoke_before(messages):
        reply.text = NOTE + reply.text
    return reply


def _respond(messages: list[dict[str, Any]], available: set[str]) -> Reply:
    seen = _read(messages)
    current = seen.user_texts[-1] if seen.user_texts else ""
    moved_on = (
        seen.outcomes
        if seen.fresh and typed_answer(current) is None and all(map(_undecided, seen.outcomes))
        else []
    )
    if seen.outcomes and not moved_on:
        # The answer follows this turn's preface ("Let me look up ...") as a new paragraph.
        lead = "\n\n" if seen.spoke_this_turn else ""
        return Reply(lead + "\n\n".join(word_outcome(o) for o in seen.outcomes))
    if not current.strip():
        return Reply("Is there anything else I can help you with?")
    reply = _act(understand(seen.user_texts), available)
    if moved_on:  # the customer wrote something else while actions waited, which declined them
        reply.text = "\n".join(not_confirmed(o) for o in moved_on) + "\n\n" + reply.text
    return reply


def _undecided(outcome: ToolOutcome) -> bool:
    """An action the service declined because the customer's message was not a yes."""
    return not outcome.ok and outcome.error.strip() in (DECLINED, EXPIRED)


def _act(found: Understanding, available: set[str]) -> Reply:
    """Call the intent's tool when it is offered and everything it needs is known; otherwise say why not."""
    intent, slots = found.intent, found.slots
    if intent.tool is None:
        return Reply(small_talk(intent.name, available))
    tool = intent.tool
    if tool == "get_product" and tool not in available and "search_products" in available:
        tool, slots = "search_products", {"query": slots.get("sku", "")}
    if tool == "search_faq" and tool not in available and intent.name == "question":
        return Reply(small_talk("unknown", available))
    if tool not in available:
        return Reply(unavailable(tool))
    if found.missing:
        # "Where is my order? I'm alice@example.com": list their orders rather than ask for the number.
        if tool == "get_order" and found.missing == ["order_id"] and "find_customer_orders" in available:
            tool = "find_customer_orders"
        else:
            return Reply(ask(tool, found))
    arguments = {arg: slots[slot] for arg, slot in _ARGUMENTS[tool] if slot in slots}
    return Reply(preface(tool, arguments), [(tool, arguments)])


# Reading the conversation ---------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    """What the model needs from the messages it was given."""

    user_texts: list[str] = field(default_factory=list)  # every user message; the last is the newest
    outcomes: list[ToolOutcome] = field(default_factory=list)  # tool results since the last text
    spoke_this_turn: bool = False  # this turn already said something before its tool calls
    fresh: bool = False  # the results follow the newest customer message directly (decided by it)


def _read(messages: list[dict[str, Any]]) -> _Seen:
    """The customer's messages, and the tool results since the last thing anyone said."""
    seen = _Seen()
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for message in messages:
        role = message.get("role")
        text = _text(message.get("content"))
        if role == "user":
            seen.user_texts.append(text)
            seen.outcomes, seen.fresh, seen.spoke_this_turn = [], True, False
        elif role == "assistant":
            if text.strip():
                # Earlier turns come back as calls, results, then the text that answered them.
                seen.outcomes, seen.fresh = [], False
                seen.spoke_this_turn = bool(message.get("tool_calls"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                name, arguments = str(function.get("name", "")), _json_object(function.get("arguments"))
                calls[str(call.get("id"))] = (name, arguments)
        elif role == "tool":
            seen.outcomes.append(_outcome(*calls.get(str(message.get("tool_call_id")), ("", {})), text))
    return seen


def _outcome(name: str, arguments: dict[str, Any], content: str) -> ToolOutcome:
    try:
        data: Any = loads(content) if content.strip() else None
    except ValueError:
        data = content
    if isinstance(data, dict) and data.get("ok") is False:
        return ToolOutcome(name, arguments, False, data, str(data.get("error") or "the request was refused"))
    return ToolOutcome(name, arguments, True, data, "")


def _spoke_before(messages: list[dict[str, Any]]) -> bool:
    """Whether an assistant message already said something: the offline note is given once per session."""
    return any(m.get("role") == "assistant" and _text(m.get("content")).strip() for m in messages)


def _tool_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for spec in tools:
        function = spec.get("function") if isinstance(spec, dict) else None
        if isinstance(function, dict) and function.get("name"):
            names.add(str(function["name"]))
    return names


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _json_object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
