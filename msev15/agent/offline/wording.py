"""What the offline model says: questions, refusals, small talk and answers worded from tool results."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msev15.agent.approvals import DECLINED
from msev15.agent.offline.intents import Understanding

log = logging.getLogger(__name__)

NOTE = (
    "(Note: I am the built-in offline assistant, because no AI model is configured; "
    "I understand the common requests only.)\n\n"
)
ORDER_TOOLS = frozenset(
    {"get_order", "find_customer_orders", "cancel_order", "update_shipping_address", "request_return"}
)
CATALOG_TOOLS = frozenset({"search_products", "get_product"})
KNOWLEDGE_TOOLS = CATALOG_TOOLS | {"get_policy", "search_faq"}

# What each tool does, for prefaces, questions and refusals ("I couldn't <verb>: <reason>").
_VERBS: dict[str, str] = {
    "get_order": "look up order {order_id}",
    "find_customer_orders": "look up the orders of {customer_email}",
    "cancel_order": "cancel order {order_id}",
    "update_shipping_address": "change the shipping address of order {order_id}",
    "request_return": "request a return for order {order_id}",
    "send_order_confirmation": "send the confirmation of order {order_id}",
    "search_products": "search the product catalog",
    "get_product": "look up product {sku}",
    "get_policy": "read our {topic} policy",
    "search_faq": "search our FAQ",
}
_PREFACES: dict[str, str] = {
    "get_order": "Let me look up order {order_id}.",
    "find_customer_orders": "Let me look up the orders for {customer_email}.",
    "cancel_order": "I'll cancel order {order_id} (reason: {reason}).",
    "update_shipping_address": "I'll change the shipping address of order {order_id} to {shipping_address}.",
    "request_return": "I'll request a return for order {order_id} (reason: {reason}).",
    "send_order_confirmation": "I'll email the confirmation of order {order_id} to {customer_email}.",
    "search_products": 'Let me search our catalog for "{query}".',
    "get_product": "Let me look up product {sku}.",
    "get_policy": "Let me fetch our {topic} policy.",
    "search_faq": "Let me check our FAQ.",
}


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A tool result of the current turn, with the call that produced it."""

    name: str
    arguments: dict[str, Any]
    ok: bool
    data: Any
    error: str


class _Blank(dict[str, Any]):
    """format_map that leaves an unknown placeholder as a neutral word instead of raising."""

    def __missing__(self, key: str) -> str:
        return {"order_id": "your order", "customer_email": "your email address"}.get(key, "that")


# Replies without a tool -------------------------------------------------------------------


def _capabilities(available: set[str]) -> str:
    lines = [
        "I can help you with:",
        '- the status of an order ("Where is my order ORD-1001? I\'m you@example.com")',
        "- a list of your orders",
        "- cancelling an order, changing its shipping address or requesting a return",
        "- emailing you an order confirmation",
        "- our products, and our returns, shipping, warranty and privacy policies",
    ]
    if not available & ORDER_TOOLS:
        lines.append("(The order system is unavailable right now.)")
    if not available & KNOWLEDGE_TOOLS:
        lines.append("(The product catalog and our policies are unavailable right now.)")
    return "\n".join(lines)


_SMALL_TALK: dict[str, Callable[[set[str]], str]] = {
    "help": lambda available: "Sure. " + _capabilities(available),
    "greeting": lambda available: "Hello! " + _capabilities(available),
    "thanks": lambda available: "You're welcome! Is there anything else I can help you with?",
    "unknown": lambda available: "I'm sorry, I didn't understand that. " + _capabilities(available),
}


def small_talk(kind: str, available: set[str]) -> str:
    """Replies that need no tool: help, greeting, thanks, and what it can do when it did not understand."""
    return _SMALL_TALK.get(kind, _SMALL_TALK["unknown"])(available)


def preface(tool: str, arguments: dict[str, Any]) -> str:
    """What it says before calling a tool, so the customer sees what it is about to do."""
    return _PREFACES[tool].format_map(_Blank(arguments))


def unavailable(tool: str) -> str:
    """Plain words for a tool that is not offered right now (the MCP server or a service is down)."""
    if tool in CATALOG_TOOLS:
        what = "The product catalog is"
    elif tool == "get_policy":
        what = "Our shop policies are"
    elif tool == "search_faq":
        what = "Our FAQ is"
    elif tool in ORDER_TOOLS:
        what = "Our order system is"
    else:
        what = "Sending emails is"
    return f"{what} unavailable right now, so I can't help with that at the moment. Please try again later."


def ask(tool: str, found: Understanding) -> str:
    """Ask for what the tool still needs, naming what is already known."""
    missing, slots = set(found.missing), found.slots
    verb = _VERBS[tool].format_map(_Blank({"order_id": slots.get("order_id", "your order")}))
    if {"order_id", "email"} <= missing:
        return (
            f"Sure, I can {verb.replace(' your order', ' an order')}. Please give me the order number "
            "(like ORD-1001) and the email address you used for the order."
        )
    if "order_id" in missing:
        return f"Which order do you mean? Please give me the order number (like ORD-1001) so I can {verb}."
    if "email" in missing:
        if tool == "find_customer_orders":
            return "Please give me the email address you use with our shop, and I'll look up your orders."
        return f"To {verb} I need the email address you used for the order, for security. What is it?"
    if "address" in missing:
        return f"What is the new shipping address for order {slots.get('order_id', 'your order')}?"
    if "topic" in missing:
        return "Which policy would you like to know about: returns, shipping, warranty or privacy?"
    return "Could you tell me a little more about what you are looking for?"


# Wording tool results -------------------------------------------------------------------


def word_outcome(outcome: ToolOutcome) -> str:
    """A plain answer from one tool result, whatever its shape."""
    verb = _VERBS.get(outcome.name, "do that").format_map(_Blank(outcome.arguments))
    if not outcome.ok:
        if outcome.error.strip() == DECLINED:
            return f"Understood: I did not {verb}. Nothing was changed."
        hint = ""
        if outcome.name in ORDER_TOOLS | {"send_order_confirmation"} and re.search(
            r"not (?:be )?f(?:ou|i)nd|no such order|there is no order", outcome.error, re.I
        ):
            hint = " Please check the order number and the email address you used for the order."
        return f"I couldn't {verb}: {_sentence(outcome.error)}{hint}"
    wording = _WORDING.get(outcome.name, _word_generic)
    try:
        return wording(outcome.arguments, outcome.data)
    except Exception:  # an unexpected result shape: fall back to listing what came back
        log.warning("unexpected %s result shape; worded generically", outcome.name, exc_info=True)
        return _word_generic(outcome.arguments, outcome.data)


def not_confirmed(outcome: ToolOutcome) -> str:
    """For an action the customer moved on from without confirming (a new message declines it)."""
    verb = _VERBS.get(outcome.name, "do that").format_map(_Blank(outcome.arguments))
    return f"(I did not {verb}, as it was not confirmed.)"


_STATUS_TEXT = {
    "pending": "is pending: we have received it and will start preparing it soon",
    "processing": "is being processed: we are preparing it for shipment",
    "shipped": "is shipped: it is on its way to you",
    "delivered": "was delivered",
    "cancelled": "is cancelled",
    "canceled": "is cancelled",
    "return_requested": "has a return requested",
}


def _word_order(arguments: dict[str, Any], data: Any) -> str:
    order = _record(data, "order")
    order_id = _first(order, "order_id", "id") or arguments.get("order_id") or "your order"
    status = str(_first(order, "status") or "").lower()
    if not status:
        return f"Here is what I found for order {order_id}: " + (_plain(data) or "no details.")
    text = f"Order {order_id} " + (_STATUS_TEXT.get(status) or f"has the status {status}") + "."
    for key, label in (("tracking_number", "Tracking number"), ("carrier", "Carrier")):
        if _first(order, key):
            text += f" {label}: {_first(order, key)}."
    items = _records(order, "items", "lines")
    if items:
        text += "\nItems:\n" + "\n".join(f"- {_item(i)}" for i in items[:20])
    total = _plain(_first(order, "total", "total_price"))
    if total:
        text += f"\nTotal: {total}."
    address = _first(order, "shipping_address", "address")
    if address and status not in ("delivered", "cancelled", "return_requested"):
        text += f"\nShipping address: {_plain(address)}."
    return text


def _word_orders(arguments: dict[str, Any], data: Any) -> str:
    orders = _records(data, "orders", "results")
    who = arguments.get("customer_email") or "that email address"
    if not orders:
        return f"I found no orders for {who}."
    lines = [f"I found {len(orders)} order{'s' if len(orders) != 1 else ''} for {who}:"]
    for order in orders[:20]:
        parts = [str(_first(order, "status") or "status unknown").replace("_", " ")]
        count = _first(order, "item_count")
        if count:
            parts.append(f"{count} item{'s' if str(count) != '1' else ''}")
        if _first(order, "total"):
            parts.append(str(_first(order, "total")))
        if _first(order, "created_at"):
            parts.append(f"placed {str(_first(order, 'created_at'))[:10]}")
        lines.append(f"- {_first(order, 'order_id', 'id') or 'order'}: {', '.join(parts)}")
    return "\n".join(lines) + "\nWould you like the details of one of them?"


def _word_change(done: str, expected: str | None) -> Callable[[dict[str, Any], Any], str]:
    """Wording for an order change: the tool returns the updated order, whose status is worth naming."""

    def word(arguments: dict[str, Any], data: Any) -> str:
        order = _record(data, "order")
        values = _Blank({**arguments, **{k: _plain(v) for k, v in order.items() if _plain(v)}})
        text = done.format_map(values)
        status = str(_first(order, "status") or "")
        if status and status != expected:
            text += f" Its status is now {status.replace('_', ' ')}."
        return text

    return word


def _word_confirmation(arguments: dict[str, Any], data: Any) -> str:
    mail = _record(data, "email", "mail")
    order_id = _first(mail, "order_id") or arguments.get("order_id", "your order")
    to = _first(mail, "to", "recipient", "customer_email") or arguments.get("customer_email", "you")
    status = str(_first(mail, "status") or "").lower()
    note = _plain(_first(mail, "note", "message"))
    if status in ("undelivered", "failed"):
        why = note or f"status: {status}"
        return f"I prepared the confirmation of order {order_id} for {to}, but it was not sent ({why})."
    return _sentence(
        f"I've sent the confirmation of order {order_id} to {to}" + (f" ({note})" if note else "")
    )


def _word_products(arguments: dict[str, Any], data: Any) -> str:
    products = _records(data, "products", "results", "items")
    query = _first(_record(data), "query") or arguments.get("query") or arguments.get("sku") or "that"
    if not products:
        return f'I couldn\'t find any products matching "{query}". Try other words, or ask about a category.'
    lines = [f'Here is what I found for "{query}":']
    lines += [f"- {_product_line(p)}" for p in products[:8]]
    return "\n".join(lines)


def _word_product(arguments: dict[str, Any], data: Any) -> str:
    product = _record(data, "product")
    if not product:
        return _word_generic(arguments, data)
    text = _product_line(product)
    description = _first(product, "description")
    return f"{text}\n{description}" if description else text


def _word_policy(arguments: dict[str, Any], data: Any) -> str:
    policy = _record(data, "policy")
    title = _first(policy, "title") or f"Our {arguments.get('topic', '')} policy".replace("  ", " ")
    lines = [f"{title}:"]
    if _first(policy, "summary"):
        lines.append(str(_first(policy, "summary")))
    details = policy.get("details") or policy.get("text") or policy.get("content") or []
    for detail in details if isinstance(details, list) else [details]:
        lines.append(f"- {_plain(detail)}")
    if len(lines) == 1:
        return _word_generic(arguments, data)
    return "\n".join(lines)


def _word_faq(arguments: dict[str, Any], data: Any) -> str:
    entries = _records(data, "results", "entries", "faq")
    if not entries:
        return "I couldn't find an answer to that in our FAQ. " + _capabilities(
            set(KNOWLEDGE_TOOLS | ORDER_TOOLS)
        )
    best = entries[0]
    text = str(_first(best, "answer") or _plain(best))
    others = [str(_first(e, "question")) for e in entries[1:3] if _first(e, "question")]
    if others:
        text += "\nRelated questions I can answer: " + "; ".join(others)
    return text


def _word_generic(arguments: dict[str, Any], data: Any) -> str:
    if data is None or data == "" or data == {} or data == []:
        return "Done, but I got no details back."
    if isinstance(data, str):
        return data[:2000]
    if isinstance(data, list):
        return f"Here is what I found ({len(data)}):\n" + "\n".join(f"- {_plain(x)}" for x in data[:20])
    return "Here is what I found: " + _plain(data)


_WORDING: dict[str, Callable[[dict[str, Any], Any], str]] = {
    "get_order": _word_order,
    "find_customer_orders": _word_orders,
    "cancel_order": _word_change("Done: order {order_id} is cancelled (reason: {reason}).", "cancelled"),
    "update_shipping_address": _word_change(
        "Done: order {order_id} will now be shipped to {shipping_address}.", None
    ),
    "request_return": _word_change(
        "Done: I requested a return for order {order_id} (reason: {reason}).", "return_requested"
    ),
    "send_order_confirmation": _word_confirmation,
    "search_products": _word_products,
    "get_product": _word_product,
    "get_policy": _word_policy,
    "search_faq": _word_faq,
}


# Defensive access to result shapes --------------------------------------------------------


def _record(data: Any, *wrappers: str) -> dict[str, Any]:
    """The object itself, or the one inside a wrapper key such as {"order": {...}}."""
    if isinstance(data, dict):
        for key in wrappers:
            if isinstance(data.get(key), dict):
                inner: dict[str, Any] = data[key]
                return inner
        return data
    return {}


def _records(data: Any, *keys: str) -> list[dict[str, Any]]:
    """A list of objects, bare or under one of `keys`; anything that is not an object is skipped."""
    found: Any = data
    if isinstance(data, dict):
        found = next((data[k] for k in keys if isinstance(data.get(k), list)), [])
    return [x for x in found if isinstance(x, dict)] if isinstance(found, list) else []


def _first(record: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = record.get(key)
        if value not in (None, "", [], {}):
            return value
    return None


def _item(item: dict[str, Any]) -> str:
    name = _first(item, "name", "sku") or "item"
    sku = _first(item, "sku")
    text = f"{_first(item, 'quantity') or 1} × {name}" + (f" ({sku})" if sku and sku != name else "")
    price = _first(item, "line_total", "unit_price", "price")
    return f"{text}, {price}" if price else text


def _product_line(product: dict[str, Any]) -> str:
    text = str(_first(product, "name") or _first(product, "sku") or "product")
    if _first(product, "sku") and _first(product, "name"):
        text += f" ({product['sku']})"
    price = _price(product)
    if price:
        text += f": {price}"
    stock = product.get("stock")
    in_stock = product.get("in_stock", stock > 0 if isinstance(stock, int) else None)
    if in_stock is True:
        text += f", in stock ({stock} available)" if isinstance(stock, int) else ", in stock"
    elif in_stock is False:
        text += ", currently out of stock"
    return text


def _price(product: dict[str, Any]) -> str:
    price = _first(product, "price", "unit_price")
    if price is None and isinstance(product.get("price_cents"), int):
        price = f"{product['price_cents'] / 100:.2f}"
    if price is None:
        return ""
    text = str(price)
    currency = str(product.get("currency") or "")
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}.get(currency.upper())
    if text[:1].isdigit():
        return f"{symbol}{text}" if symbol else f"{text} {currency}".strip()
    return text


def _plain(value: Any) -> str:
    """A short human rendering of any JSON value."""
    if isinstance(value, dict):
        return ", ".join(
            f"{k.replace('_', ' ')}: {_plain(v)}" for k, v in list(value.items())[:8] if _plain(v)
        )
    if isinstance(value, list):
        return "; ".join(_plain(v) for v in value[:10])
    if value is None:
        return ""
    return str(value)[:500]


def _sentence(text: str) -> str:
    text = text.strip() or "the request was refused"
    return text if text[-1] in ".!?" else text + "."
