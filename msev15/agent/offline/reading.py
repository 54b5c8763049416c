"""Reading the conversation the agent sends: the customer's words, what was said, and every tool result.

Earlier turns arrive as the customer's message, the turn's tool calls and results, then the answer
(agent/history.py); this turn's rounds as the model's own text with its calls, then the results.
A call the service decided (an approval, a typed yes or no) comes under its approval's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from msev15.agent.approvals import APPROVAL_ID_PREFIX
from msev15.agent.offline.slots import order_ids_in
from msev15.jsonio import loads


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One tool result, with the call that produced it."""

    name: str
    arguments: dict[str, Any]
    ok: bool
    data: Any
    error: str
    decided: bool = False  # a decision of the service (approval or typed answer), not the model's call


@dataclass(slots=True)
class Conversation:
    """What the offline model needs from the messages and tools it was given."""

    available: set[str] = field(default_factory=set)  # the tools it may call
    parameters: dict[str, set[str]] = field(default_factory=dict)  # each tool's argument names
    user_texts: list[str] = field(default_factory=list)  # every customer message; the last is the newest
    said: list[tuple[str, str]] = field(default_factory=list)  # (role, text) of everything said, in order
    outcomes: list[ToolOutcome] = field(default_factory=list)  # every tool result, oldest first
    this_turn: list[ToolOutcome] = field(default_factory=list)  # results of the turn under way
    unworded: list[ToolOutcome] = field(default_factory=list)  # results since anything was last said
    spoke_this_turn: bool = False  # this turn already said something before its tool calls
    fresh: bool = False  # the newest customer message belongs to this turn
    spoke_before: bool = False  # an assistant message said something earlier (the offline note is given)
    mentions: list[str] = field(default_factory=list)  # orders talked about: the customer's, the tools'

    @property
    def current(self) -> str:
        return self.user_texts[-1] if self.user_texts else ""

    def done(self, name: str, arguments: dict[str, Any]) -> ToolOutcome | None:
        """This turn's result of exactly this call, if it was made."""
        return next((o for o in self.this_turn if o.name == name and o.arguments == arguments), None)


def read(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Conversation:
    seen = Conversation()
    for spec in tools:
        function = spec.get("function") if isinstance(spec, dict) else None
        if isinstance(function, dict) and function.get("name"):
            properties = (function.get("parameters") or {}).get("properties") or {}
            seen.parameters[str(function["name"])] = (
                set(properties) if isinstance(properties, dict) else set()
            )
    seen.available = set(seen.parameters)
    calls: dict[str, tuple[str, dict[str, Any], bool]] = {}
    for message in messages:
        _take(seen, message, calls)
    return seen


def _take(
    seen: Conversation, message: dict[str, Any], calls: dict[str, tuple[str, dict[str, Any], bool]]
) -> None:
    role = message.get("role")
    text = text_of(message.get("content"))
    if role == "user":
        seen.mentions += order_ids_in(text)[:1]
        seen.user_texts.append(text)
        seen.said.append(("user", text))
        seen.this_turn, seen.unworded = [], []
        seen.fresh, seen.spoke_this_turn = True, False
    elif role == "assistant":
        with_calls = bool(message.get("tool_calls"))
        if text.strip():
            seen.said.append(("assistant", text))
            seen.spoke_before = True
            seen.unworded = []
            seen.spoke_this_turn = with_calls
            if not with_calls:  # an earlier turn's answer: a new turn starts after it
                seen.this_turn, seen.fresh = [], False
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            name, arguments = str(function.get("name", "")), json_object(function.get("arguments"))
            call_id = str(call.get("id"))
            calls[call_id] = (name, arguments, call_id.startswith(APPROVAL_ID_PREFIX))
    elif role == "tool":
        name, arguments, decided = calls.get(str(message.get("tool_call_id")), ("", {}, False))
        outcome = _outcome(name, arguments, text, decided)
        if outcome.ok and isinstance(outcome.data, dict) and isinstance(outcome.data.get("order_id"), str):
            seen.mentions.append(outcome.data["order_id"])
        seen.outcomes.append(outcome)
        seen.this_turn.append(outcome)
        seen.unworded.append(outcome)


def _outcome(name: str, arguments: dict[str, Any], content: str, decided: bool) -> ToolOutcome:
    try:
        data: Any = loads(content) if content.strip() else None
    except ValueError:
        data = content
    if isinstance(data, dict) and data.get("ok") is False:
        error = str(data.get("error") or "the request was refused")
        return ToolOutcome(name, arguments, False, data, error, decided)
    return ToolOutcome(name, arguments, True, data, "", decided)


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def json_object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
