"""The built-in offline model: deterministic and network-free, yet able to use the shop's real tools.

Each round it reads the whole conversation again (offline/reading.py), finds the customer's
requests (offline/requests.py), decides each one's next step (offline/planner.py) and says it.
Lookups run first, all in one round; actions are proposed once nothing is left to look up, so the
answers to the lookups come before the request to confirm.
"""

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
from msev15.agent.offline import slots as s
from msev15.agent.offline.intents import foreign
from msev15.agent.offline.phrases import NOTE, not_confirmed, preface
from msev15.agent.offline.planner import plan
from msev15.agent.offline.reading import Conversation, ToolOutcome, read
from msev15.agent.offline.requests import split, understand
from msev15.agent.offline.wording import word_outcome
from msev15.jsonio import dumps

log = logging.getLogger(__name__)

ANYTHING_ELSE = "Is there anything else I can help you with?"


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
    """The next round: word this turn's results, act on the customer's newest message, or both."""
    conv = read(messages, tools)
    try:
        reply = _respond(conv)
    except Exception:  # a wording bug must never cost the customer their answer
        log.exception("offline model failed to word a reply")
        reply = Reply("Sorry, something went wrong on my side while answering. Please try again.")
    if not conv.spoke_before:
        reply.text = NOTE + reply.text if reply.text else NOTE.rstrip()
    return reply


def _respond(conv: Conversation) -> Reply:
    # The answer follows this turn's preface ("Let me look up ...") as a new paragraph.
    lead = "\n\n" if conv.spoke_this_turn else ""
    decided = [o for o in conv.this_turn if o.decided]
    if decided and len(decided) == len(conv.this_turn):
        if not conv.fresh or typed_answer(conv.current) is not None:
            # An approval, or a typed yes or no: say how the decided actions went, nothing more.
            return Reply(lead + "\n\n".join(word_outcome(o) for o in conv.unworded))
    notes: list[str] = []
    if conv.fresh and decided and all(map(_undecided, decided)) and decided[0] in conv.unworded:
        # The customer wrote something else while actions waited, which declined them.
        amended = _amend(conv, decided)
        if amended is not None:
            return amended
        notes = ["\n".join(not_confirmed(o) for o in decided)]
    if not conv.current.strip() and not conv.unworded:
        return Reply(ANYTHING_ELSE)
    steps = [plan(request, conv) for request in understand(conv.user_texts, conv.mentions)]
    consumed = [o for step in steps for o in step.consumed]
    worded = [word_outcome(o) for o in conv.unworded if not o.decided and not any(o is c for c in consumed)]
    lookups = [call for step in steps for call in step.lookups]
    if lookups:
        return Reply(lead + "\n\n".join([*notes, *worded, *(preface(n, a) for n, a in lookups)]), lookups)
    said = [*notes, *worded, *(step.text for step in steps if step.text)]
    said += [text for step in steps for _, _, text in step.proposals if text]
    calls = [(name, arguments) for step in steps for name, arguments, _ in step.proposals]
    return Reply(lead + ("\n\n".join(said) or ("" if calls else ANYTHING_ELSE)), calls)


def _undecided(outcome: ToolOutcome) -> bool:
    """An action the service declined because the customer's message was not a yes."""
    return not outcome.ok and outcome.error.strip() in (DECLINED, EXPIRED)


def _amend(conv: Conversation, declined: list[ToolOutcome]) -> Reply | None:
    """ "They're too tight", sent while a return waited: the same action again, in the customer's words."""
    current = conv.current
    asks = [i.name for i, _ in split(current) if i is not None and i.tool]
    if (
        foreign(current)
        or "?" in current
        or any(name != "address" for name in asks)
        or s.order_ids_in(current)
    ):
        return None
    again = [_amended(o, current, bool(asks)) for o in declined]
    if not all(again):
        return None
    calls = [(name, arguments) for name, arguments, _ in (a for a in again if a is not None)]
    changes = "; ".join(dict.fromkeys(change for a in again if a is not None for change in a[2]))
    return Reply(f"Understood: {changes}.", calls)


def _amended(
    outcome: ToolOutcome, text: str, names_address: bool
) -> tuple[str, dict[str, Any], list[str]] | None:
    """The declined call with what the message changes, and those changes in words."""
    arguments, changes = dict(outcome.arguments), []
    if outcome.name in ("cancel_order", "request_return") and not names_address:
        reason = s.reason_in(text)
        if not reason:
            return None
        arguments["reason"] = reason
        changes.append(f'I noted "{reason}" as the reason')
    elif outcome.name in ("update_shipping_address", "create_order"):
        address = s.address_in(text) or s.answered_address(text)
        name = s.name_in(text) if outcome.name == "create_order" else None
        if address:
            arguments["shipping_address"] = address
            changes.append(f"I changed the shipping address to {address}")
        if name:
            arguments["customer_name"] = name
            changes.append(f"I changed the name to {name}")
        if not changes:
            return None
    else:
        return None
    return outcome.name, arguments, changes
