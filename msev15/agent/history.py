"""The conversation as the model reads it: earlier turns with their tool calls and results, within a budget.

A stored assistant message keeps its tool calls as `{id, name, arguments, ok, result?, decision?}`;
`result` is what the model read back (clipped). Each earlier turn goes back to the model in the
OpenAI form: the customer's message, one assistant message with the turn's `tool_calls`, a `tool`
message per call, then the turn's text. Calls stored without a result (records older than results)
are left out, so no `tool` message is ever sent without its call or a call without its result.
"""

from __future__ import annotations

from typing import Any

from msev15.jsonio import dumps
from msev15.stores.sessions import Message
from msev15.tools.registry import ToolResult

STORED_RESULT_CHARS = 4000
_CLIPPED = " …[clipped]"


def stored_result(text: str) -> str:
    """A tool result as the session keeps it: enough to answer follow-ups, never unbounded."""
    if len(text) <= STORED_RESULT_CHARS:
        return text
    return text[:STORED_RESULT_CHARS] + _CLIPPED


def call_record(
    call_id: str, name: str, arguments: dict[str, Any], result: ToolResult, decision: str | None = None
) -> dict[str, Any]:
    """A call as the session keeps it, with what the model read back, so later turns see it too."""
    record: dict[str, Any] = {"id": call_id, "name": name, "arguments": arguments, "ok": result.ok}
    if decision is not None:
        record["decision"] = decision
    record["result"] = stored_result(result.for_model())
    return record


def model_history(messages: list[Message], budget: int) -> list[dict[str, Any]]:
    """As many recent whole turns as fit in `budget` characters, oldest dropped first.

    The window never opens on an answer whose question was dropped.
    """
    kept: list[list[dict[str, Any]]] = []
    for turn in reversed(_turns(messages)):
        rendered = [item for message in turn for item in _render(message)]
        budget -= size(rendered)
        if budget < 0:
            break
        kept.append(rendered)
    kept.reverse()
    while kept and kept[0][0]["role"] != "user":
        kept.pop(0)
    return [item for turn in kept for item in turn]


def size(messages: list[dict[str, Any]]) -> int:
    """Characters the messages cost: their text, tool results and call arguments."""
    total = 0
    for message in messages:
        total += len(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            total += len(call["function"]["arguments"]) + len(call["function"]["name"])
    return total


def _turns(messages: list[Message]) -> list[list[Message]]:
    """Whole turns: a customer message and the answer after it; an answer alone (approvals) is its own."""
    turns: list[list[Message]] = []
    for message in messages:
        if turns and message.role != "user" and turns[-1][-1].role == "user":
            turns[-1].append(message)
        else:
            turns.append([message])
    return turns


def _render(message: Message) -> list[dict[str, Any]]:
    if message.role != "assistant":
        return [{"role": message.role, "content": message.content}]
    calls = [c for c in message.tool_calls or () if _complete(c)]
    out: list[dict[str, Any]] = []
    if calls:
        out.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": str(c["id"]),
                        "type": "function",
                        "function": {"name": str(c["name"]), "arguments": dumps(c.get("arguments") or {})},
                    }
                    for c in calls
                ],
            }
        )
        out += [{"role": "tool", "tool_call_id": str(c["id"]), "content": c["result"]} for c in calls]
    # The turn's text closes it, even when empty (cut short): every turn ends with an assistant message.
    out.append({"role": "assistant", "content": message.content})
    return out


def _complete(call: Any) -> bool:
    return (
        isinstance(call, dict)
        and bool(call.get("id"))
        and bool(call.get("name"))
        and isinstance(call.get("result"), str)
    )
