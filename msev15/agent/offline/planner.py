"""Each request's next step: look something up, ask for what is missing, answer, or propose the action.

A step is decided afresh every round from the conversation: a lookup already made this turn is not
made again, and a result the step words itself (an arrival estimate, the product an order is for)
is not also worded on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from msev15.agent.offline.phrases import (
    CONSEQUENTIAL,
    ask,
    ask_for_purchase,
    not_understood,
    small_talk,
    unavailable,
)
from msev15.agent.offline.reading import Conversation, ToolOutcome
from msev15.agent.offline.requests import Request, bare
from msev15.agent.offline.wording import product_label, product_line, word_arrival

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
    "search_products": (("query", "query"), ("sort", "sort"), ("max_price", "max_price")),
    "get_product": (("sku", "sku"),),
    "get_policy": (("topic", "topic"),),
    "search_faq": (("query", "query"),),
}
_PRICE_WORDS = {"price_low_to_high": "cheapest", "price_high_to_low": "most expensive"}


@dataclass(slots=True)
class Step:
    lookups: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # read-only calls to make now
    proposals: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # (tool, args, preface)
    text: str = ""  # an answer or a question, said once nothing is left to look up
    consumed: list[ToolOutcome] = field(default_factory=list)  # results this step words itself


def plan(request: Request, conv: Conversation) -> Step:
    intent, slots, available = request.intent, dict(request.slots), conv.available
    if intent.name == "buy":
        return _purchase(request, conv)
    if intent.name == "arrival":
        return _arrival(request, conv)
    if intent.tool is None:
        return Step(text=small_talk(intent.name, available))
    tool = intent.tool
    if tool == "get_product" and tool not in available and "search_products" in available:
        tool, slots = "search_products", {"query": slots.get("sku", "")}
    if tool == "search_faq" and tool not in available and intent.name == "question":
        return Step(text=not_understood(available))
    if tool not in available:
        return Step(text=unavailable(tool))
    if tool == "search_products" and bare(str(slots.get("query", ""))):
        # "and the cheapest one?": the last search again, in that order; or the whole catalog
        ordered = slots.get("sort") or slots.get("max_price")
        slots["query"] = _last_query(conv) or ("products" if ordered else "")
        if not slots["query"]:
            return Step(text="Which kind of product are you looking for?")
        request = Request(request.intent, request.text, slots, [m for m in request.missing if m != "query"])
    if request.missing:
        # "Where is my order? I'm alice@example.com": list their orders rather than ask for the number.
        if tool != "get_order" or request.missing != ["order_id"] or "find_customer_orders" not in available:
            return Step(text=ask(request, tool))
        tool = "find_customer_orders"
    return _call(tool, _arguments(tool, slots, conv), conv)


def _call(tool: str, arguments: dict[str, Any], conv: Conversation) -> Step:
    if conv.done(tool, arguments) is not None:
        return Step()  # made this turn: its result is worded as it is
    if tool in CONSEQUENTIAL:  # the service's request to confirm names it: nothing to add
        return Step(proposals=[(tool, arguments, "")])
    return Step(lookups=[(tool, arguments)])


def _arguments(tool: str, slots: dict[str, Any], conv: Conversation) -> dict[str, Any]:
    arguments = {arg: slots[slot] for arg, slot in _ARGUMENTS[tool] if slots.get(slot) not in (None, "")}
    if tool == "search_products":
        accepted = conv.parameters.get(tool, set())
        words = []  # a server without these arguments still reads "cheapest" and "under $50"
        if "sort" in arguments and "sort" not in accepted:
            words.append(_PRICE_WORDS.get(arguments.pop("sort"), ""))
        if "max_price" in arguments and "max_price" not in accepted:
            arguments["query"] = f"{arguments.get('query', '')} under ${arguments.pop('max_price'):g}"
        arguments["query"] = " ".join(w for w in (*words, arguments.get("query", "")) if w).strip()
    return arguments


def _last_query(conv: Conversation) -> str | None:
    for outcome in reversed(conv.outcomes):
        if outcome.name == "search_products" and outcome.arguments.get("query"):
            return str(outcome.arguments["query"])
    return None


# When will it arrive -----------------------------------------------------------------------------


def _arrival(request: Request, conv: Conversation) -> Step:
    """The order's latest known state and the shipping policy: from earlier turns, or looked up now."""
    if "get_order" not in conv.available:
        return Step(text=unavailable("get_order"))
    if request.missing:
        return Step(text=ask(request, "get_order"))
    order_id, email = request.slots["order_id"], request.slots["email"]
    lookup = {"order_id": order_id, "customer_email": email}
    order = _latest_order(conv, order_id)
    lookups: list[tuple[str, dict[str, Any]]] = []
    if order is None:
        if conv.done("get_order", lookup) is not None:
            return Step()  # it could not be looked up: that refusal is worded as it is
        lookups.append(("get_order", lookup))
    policy = _latest(conv, "get_policy", {"topic": "shipping"})
    tried = conv.done("get_policy", {"topic": "shipping"})
    if policy is None and tried is None and "get_policy" in conv.available:
        lookups.append(("get_policy", {"topic": "shipping"}))
    if lookups:
        return Step(lookups=lookups)
    assert order is not None
    consumed = [o for o in (order, policy, tried) if o is not None and o in conv.this_turn]
    return Step(text=word_arrival(order.data, policy.data if policy else None), consumed=consumed)


def _latest_order(conv: Conversation, order_id: str) -> ToolOutcome | None:
    """The newest result that showed the whole order (a lookup, or the change that returned it)."""
    for outcome in reversed(conv.outcomes):
        data = outcome.data
        if outcome.ok and isinstance(data, dict) and data.get("order_id") == order_id and data.get("status"):
            return outcome
    return None


def _latest(conv: Conversation, name: str, arguments: dict[str, Any]) -> ToolOutcome | None:
    return next(
        (o for o in reversed(conv.outcomes) if o.ok and o.name == name and o.arguments == arguments), None
    )


# Placing an order --------------------------------------------------------------------------------


def _purchase(request: Request, conv: Conversation) -> Step:
    """Find the product, ask for whatever the order still needs, then propose it."""
    if "create_order" not in conv.available:
        return Step(text=unavailable("create_order"))
    product, step = _product(request, conv)
    if product is None:
        return step
    slots = request.slots
    quantity = int(slots.get("quantity") or 1)
    what = f"{quantity} × {product_label(product)}"
    if request.missing:
        return Step(text=ask_for_purchase(request.missing, what), consumed=step.consumed)
    arguments = {
        "customer_email": slots["email"],
        "customer_name": slots["name"],
        "items": [{"sku": product["sku"], "quantity": quantity}],
        "shipping_address": slots["address"],
    }
    if conv.done("create_order", arguments) is not None:
        return Step(consumed=step.consumed)
    text = f"Here is the order: {what} for {slots['name']}, shipped to {slots['address']}."
    return Step(proposals=[("create_order", arguments, text)], consumed=step.consumed)


def _product(request: Request, conv: Conversation) -> tuple[dict[str, Any] | None, Step]:
    """The product to order: its sku, a product named and looked up, or the one just shown."""
    sku = request.slots.get("sku")
    if sku:
        known = next((p for p in _shown_products(conv) if str(p.get("sku", "")).upper() == sku), None)
        looked = conv.done("get_product", {"sku": sku})
        if known is not None or "get_product" not in conv.available:
            return known or {"sku": sku}, Step(consumed=[looked] if looked else [])
        if looked is None:  # its name and price, for the question and the confirmation
            return None, Step(lookups=[("get_product", {"sku": sku})])
        text = f"I couldn't find a product with the SKU {sku}. Which product would you like to order?"
        return None, Step(text=text, consumed=[looked])
    phrase = str(request.slots.get("product") or "")
    if not phrase:
        return _pointed_at(conv, request)
    searched = conv.done("search_products", {"query": phrase})
    last = searched or _latest(conv, "search_products", {"query": phrase})
    if last is None:
        known = _pick(_shown_products(conv), phrase, exact=True)
        if known is not None:
            return known, Step()
        if "search_products" not in conv.available:
            return None, Step(text="Which product would you like? Please give me its SKU (like MSE-WL500).")
        return None, Step(lookups=[("search_products", {"query": phrase})])
    consumed = [searched] if searched is not None else []
    found = _products(last.data) if last.ok else []
    if not found:
        text = f'I couldn\'t find a product matching "{phrase}". Which product would you like to order?'
        return None, Step(text=text, consumed=consumed)
    chosen = _pick(found, phrase, exact=len(found) > 1) or _chosen_since(found, request)
    if chosen is None:
        return None, Step(text=_which_one(found), consumed=consumed)
    return chosen, Step(consumed=consumed)


def _pointed_at(conv: Conversation, request: Request) -> tuple[dict[str, Any] | None, Step]:
    """ "I'd like to buy one": the product the last search showed first when it was the only one or
    the cheapest; among several, the one the customer named since."""
    for outcome in reversed(conv.outcomes):
        if outcome.ok and outcome.name in ("search_products", "get_product"):
            found = _products(outcome.data)
            if not found:
                continue
            ordered = isinstance(outcome.data, dict) and bool(outcome.data.get("sorted_by"))
            chosen = found[0] if len(found) == 1 or ordered else _chosen_since(found, request)
            return (chosen, Step()) if chosen else (None, Step(text=_which_one(found)))
    return None, Step(
        text="Which product would you like to order? Please give me its name or SKU (like MSE-WL500)."
    )


def _chosen_since(found: list[dict[str, Any]], request: Request) -> dict[str, Any] | None:
    """The product a later message picked out of several ("the kids' ones")."""
    for text in reversed(request.later):
        chosen = _pick(found, text, exact=False)
        if chosen is not None:
            return chosen
    return None


def _products(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("products"), list):
        return [p for p in data["products"] if isinstance(p, dict) and p.get("sku")]
    if isinstance(data, dict) and data.get("sku"):
        return [data]
    return []


def _shown_products(conv: Conversation) -> list[dict[str, Any]]:
    return [p for o in reversed(conv.outcomes) if o.ok for p in _products(o.data)]


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1}


def _pick(products: list[dict[str, Any]], phrase: str, exact: bool) -> dict[str, Any] | None:
    """The one product the phrase names: all its words in one name (exact), or the single best overlap."""
    wanted = _words(phrase)
    if not exact and len(products) == 1:
        return products[0]
    scored = sorted(
        (
            (len(wanted & _words(f"{p.get('name', '')} {p.get('sku', '')}")), n, p)
            for n, p in enumerate(products)
        ),
        key=lambda item: (-item[0], item[1]),
    )
    if exact:
        full = [p for p in products if wanted and wanted <= _words(str(p.get("name", "")))]
        return full[0] if len(full) == 1 else None
    if scored and scored[0][0] > 0 and (len(scored) == 1 or scored[1][0] < scored[0][0]):
        return scored[0][2]
    return None


def _which_one(products: list[dict[str, Any]]) -> str:
    lines = "\n".join(f"- {product_line(p)}" for p in products[:8])
    return f"Which one would you like to order?\n{lines}\nPlease tell me its name or SKU."
