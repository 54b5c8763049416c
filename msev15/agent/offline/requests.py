"""The customer's requests in the newest message, each with the slots it can fill and those still missing.

A message may hold several requests ("Where is ORD-1002, and please cancel ORD-1001"): it is cut
into clauses, and each clause that asks for something different starts a request of its own;
clauses that ask for nothing (an email, a reason) belong to the request before them. A message
that asks for nothing may answer an earlier request that was waiting for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msev15.agent.offline import slots as s
from msev15.agent.offline.intents import (
    BY_NAME,
    FOREIGN,
    QUESTION,
    SMALL_TALK,
    UNKNOWN,
    Intent,
    detect,
    foreign,
)

# Between clauses: a sentence end, a new line, or "and"/"also" before a new request.
_BETWEEN = re.compile(
    r"(?<=[.?!;])\s+|\n+|,?\s+(?:and|also|plus|then)\s+(?=(?:can|could|would|will|please|also|i|i'd|i'm|"
    r"what|where|when|how|is|do|does|cancel|change|update|return|send|email|track|list|show|tell)\b)",
    re.IGNORECASE,
)
_FOLLOW_UP = re.compile(r"^\W*(?:and also|and|what about|how about|also|or)\b\W*", re.IGNORECASE)
_BARE = frozenset(
    "what whats what's which is are the one ones of them these those it s do you have a an your please "
    "show me tell about any there sell and so then how thing things item items anything stuff".split()
)
# "Cancel ORD-1001 and ORD-1004": one request for each order of such a list.
_ID_LIST = re.compile(r"\bORD[-\s#]?\d{3,}(?:\s*(?:,|and|&|,\s*and)\s*(?:ORD[-\s#]?)?\d{3,})+", re.IGNORECASE)


@dataclass(slots=True)
class Request:
    """One thing the customer asked for."""

    intent: Intent
    text: str  # the customer's words for it
    slots: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    later: list[str] = field(default_factory=list)  # the customer's messages since, which may answer it


def understand(user_texts: list[str], mentions: list[str] | None = None) -> list[Request]:
    """The requests of the newest message, or the earlier request it answers.

    `mentions` are the orders talked about so far, oldest first (the customer's ids and the orders
    tool results were about): "cancel it" means the latest.
    """
    if not user_texts:
        return [Request(UNKNOWN, "")]
    current = user_texts[-1]
    if foreign(current):
        return [Request(FOREIGN, current)]
    mentions = mentions if mentions is not None else _mentioned(user_texts)
    parts = split(current)
    wanted = [(intent, text) for intent, text in parts if intent is not None and intent.tool]
    pending = _pending(user_texts, mentions)
    if all(i.name == "order_status" for i, _ in wanted) and _just_details(current):
        # "ORD-1001, alice@example.com" answers the question it was asked, or corrects the last request
        again = pending or _pending(user_texts, mentions, corrected_by=current)
        if again is not None:
            return [again]
    if pending is not None and pending.intent.name == "buy" and not s.order_ids_in(current):
        if wanted and all(i.name == "address" for i, _ in wanted):
            return [pending]  # "send it to 77 Elm Street": where the new order goes, not a change
    follow_up = _FOLLOW_UP.match(current)
    if not wanted and follow_up and len(user_texts) > 1 and _searched(user_texts[-2]):
        text = current[follow_up.end() :]  # "and a laptop bag?" after a product search
        return [fill(BY_NAME["product_search"], text, user_texts, len(user_texts) - 1, mentions)]
    if wanted:
        origin = len(user_texts) - 1
        return [
            fill(intent, part, user_texts, origin, mentions)
            for intent, text in wanted
            for part in _each_order(intent, text)
        ]
    talk = next((intent for intent, _ in parts if intent is not None and intent.name in SMALL_TALK), None)
    if talk is not None:
        return [Request(talk, current)]
    if pending is not None:
        return [pending]
    if QUESTION.pattern.search(current):
        return [fill(QUESTION, current, user_texts, len(user_texts) - 1, mentions)]
    return [Request(UNKNOWN, current)]


def split(text: str) -> list[tuple[Intent | None, str]]:
    """The message's requests in order: (intent, its words); words before any request join the first."""
    groups: list[list[Any]] = []  # [intent, start, end]
    start = 0
    for end, after in [*((m.start(), m.end()) for m in _BETWEEN.finditer(text)), (len(text), len(text))]:
        clause = text[start:end]
        if clause.strip():
            _place(groups, detect(clause), clause, start, end)
        start = after
    return [(intent, text[a:b]) for intent, a, b in groups]


def _place(groups: list[list[Any]], intent: Intent | None, clause: str, start: int, end: int) -> None:
    last = groups[-1] if groups else None
    if last is not None and (intent is None or not intent.tool or _continues(last[0], intent, clause)):
        last[2] = end
        if last[0] is None or (not last[0].tool and intent is not None):
            last[0] = intent
        return
    if last is not None and last[0] is None:  # the words before the first request belong to it
        last[0], last[2] = intent, end
        return
    groups.append([intent, start, end])


def _each_order(intent: Intent, text: str) -> list[str]:
    """The request's words once per order of a list it names ("cancel ORD-1001 and ORD-1004")."""
    listed = _ID_LIST.search(text)
    if listed is None or "order_id" not in intent.needs:
        return [text]
    numbers = re.findall(r"\d{3,}", listed.group(0))
    return [text[: listed.start()] + f"ORD-{n}" + text[listed.end() :] for n in dict.fromkeys(numbers)]


def _continues(previous: Intent | None, intent: Intent, clause: str) -> bool:
    """The same request again, not another one: same intent, and no other order named."""
    return previous is not None and previous.name == intent.name and len(s.order_ids_in(clause)) <= 1


def _pending(user_texts: list[str], mentions: list[str], corrected_by: str | None = None) -> Request | None:
    """The latest earlier request that still missed something, now completed by the later messages;
    or, `corrected_by` a message with another email or order number, the latest request at all."""
    for index in range(len(user_texts) - 2, max(-1, len(user_texts) - 5), -1):
        wanted = [(i, t) for i, t in split(user_texts[index]) if i is not None and i.tool]
        if not wanted:
            if any(i is not None for i, _ in split(user_texts[index])):
                return None  # small talk in between: nothing is waiting
            continue
        intent, text = wanted[-1]
        if intent.name == "address" and not s.order_ids_in(text) and _buying(user_texts[:index]):
            continue  # "send it to ...": the address of the order being placed, asked for before
        if corrected_by is not None:
            gives = {"email"} if s.email_in(corrected_by) else set()
            gives |= {"order_id"} if s.order_ids_in(corrected_by) else set()
            return fill(intent, text, user_texts, index, mentions) if gives & set(intent.needs) else None
        before = fill(intent, text, user_texts[: index + 1], index, _mentioned(user_texts[: index + 1]))
        if not before.missing and not _unresolved_product(before):
            return None
        return fill(intent, text, user_texts, index, mentions)
    return None


def _buying(earlier: list[str]) -> bool:
    """Whether one of the last few messages started an order that may still be waiting for details."""
    return any(i is not None and i.name == "buy" for text in earlier[-3:] for i, _ in split(text))


def _searched(text: str) -> bool:
    return any(i is not None and i.name in ("product_search", "product_sku") for i, _ in split(text))


def _unresolved_product(request: Request) -> bool:
    return request.intent.name == "buy" and not request.slots.get("sku") and not request.slots.get("product")


def fill(intent: Intent, text: str, user_texts: list[str], origin: int, mentions: list[str]) -> Request:
    """The request's slots: ids and email from anywhere, free text from the request or its answers."""
    request = Request(intent, text, later=user_texts[origin + 1 :])
    found = request.slots
    message_ids = s.order_ids_in(user_texts[origin])
    later = user_texts[origin + 1 :]  # answers to it, or corrections: they win
    order_id = _latest(later, s.order_id_in) or s.order_id_in(text)
    order_id = (
        order_id
        or (message_ids[0] if len(message_ids) == 1 else None)
        or (mentions[-1] if mentions else None)
    )
    email = _latest(later, s.email_in) or s.email_in(text) or _latest(user_texts[: origin + 1], s.email_in)
    if order_id:
        found["order_id"] = order_id
    if email:
        found["email"] = email
    _FILLERS.get(intent.name, _no_more)(found, text, later, user_texts)
    request.slots = {k: v for k, v in found.items() if v not in (None, "")}
    request.missing = [name for name in intent.needs if name != "product" and not request.slots.get(name)]
    return request


def _reason(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    pattern = detect(text)
    found["reason"] = (
        next(
            (r for r in (s.reason_in(t, pattern.pattern if pattern else None) for t in reversed(later)) if r),
            None,
        )
        or s.reason_in(text, pattern.pattern if pattern else None)
        or s.DEFAULT_REASON
    )


def _address(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    found["address"] = s.address_in(text) or next(
        (a for a in map(s.answered_address, reversed(later)) if a), None
    )


def _topic(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    found["topic"] = s.topic_in(text) or (s.topic_in(later[-1]) if later else None)


def _sku(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    found["sku"] = s.sku_in(text)


def _search(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    sort, cap = s.price_wishes(text)
    clauses = [c for c in re.split(r"(?<=[.?!;])\s+", text) if c.strip()]
    queries = [s.product_query(s.without_price_words(c)) for c in clauses]
    found["query"] = next((q for q in queries if not bare(q)), "")
    found["sort"], found["max_price"] = sort, cap


def _question(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    found["query"] = s.question_query(text)


def _purchase(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    found["sku"] = s.sku_in(text)
    found["product"] = "" if found["sku"] else s.bought_product(text)
    found["quantity"] = s.quantity_in(text) or 1
    found["address"] = s.address_in(text) or next(
        (a for a in (s.address_in(t) or s.answered_address(t) for t in reversed(later)) if a), None
    )
    names = [
        s.name_in(text) or s.buyer_in(text),
        *(s.name_in(t) or s.answered_name(t) for t in reversed(later)),
    ]
    found["name"] = next((n for n in names if n), None) or _latest(texts, s.name_in)


def _no_more(found: dict[str, Any], text: str, later: list[str], texts: list[str]) -> None:
    return None


_FILLERS: dict[str, Callable[[dict[str, Any], str, list[str], list[str]], None]] = {
    "cancel": _reason,
    "return": _reason,
    "address": _address,
    "policy": _topic,
    "product_sku": _sku,
    "product_search": _search,
    "faq": _question,
    "question": _question,
    "buy": _purchase,
}


def bare(query: str) -> bool:
    """A query that names no product ("the cheapest one"): it points at the last search instead."""
    return not [w for w in re.findall(r"[a-z0-9']+", query.lower()) if w not in _BARE]


def _latest(texts: list[str], find: Callable[[str], str | None]) -> str | None:
    for text in reversed(texts):
        value = find(text)
        if value:
            return value
    return None


def _mentioned(user_texts: list[str]) -> list[str]:
    return [ids[0] for ids in map(s.order_ids_in, user_texts) if ids]


_DETAILS = frozenset(
    "it it's its is the order number no nr id my email e-mail and i i'm im am here you go sure ok okay yes "
    "sorry oh oops that's thats actually wrong try with use mine".split()
)


def _just_details(text: str) -> bool:
    """A message that only gives an order number and an email, as asked."""
    rest = s.EMAIL.sub(" ", s.ORDER_NUMBER.sub(" ", s.ORDER_ID.sub(" ", text)))
    return not [w for w in re.findall(r"[a-z0-9'-]+", rest.lower()) if w not in _DETAILS]
