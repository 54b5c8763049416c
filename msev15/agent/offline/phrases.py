"""What the offline model says without a tool result: prefaces, questions, small talk and refusals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msev15.agent.offline.reading import ToolOutcome
from msev15.agent.offline.requests import Request

NOTE = (
    "(Note: I am the built-in offline assistant, because no AI model is configured; "
    "I understand the common requests only.)\n\n"
)
ORDER_TOOLS = frozenset(
    {"get_order", "find_customer_orders", "cancel_order", "update_shipping_address", "request_return"}
)
CATALOG_TOOLS = frozenset({"search_products", "get_product"})
KNOWLEDGE_TOOLS = CATALOG_TOOLS | {"get_policy", "search_faq"}
# Calls that change the world: the service asks the customer before they run.
CONSEQUENTIAL = frozenset(
    {"create_order", "update_shipping_address", "cancel_order", "request_return", "send_email"}
)

# What each tool does, for prefaces, questions and refusals ("I couldn't <verb>: <reason>").
VERBS: dict[str, str] = {
    "get_order": "look up order {order_id}",
    "find_customer_orders": "look up the orders of {customer_email}",
    "create_order": "place the order",
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
    "create_order": "I'll place the order.",
}
EXAMPLES = (
    '"Where is my order ORD-1001? I\'m you@example.com"',
    '"Cancel ORD-1001, I\'m you@example.com"',
    '"Do you sell wireless mice?"',
    "\"I'd like to buy 2 MSE-WL500, ship to 1 Main St, Springfield. I'm Ann Lee, you@example.com\"",
    '"When will my order arrive?"',
    '"What is your return policy?"',
)


class Blank(dict[str, Any]):
    """format_map that leaves an unknown placeholder as a neutral word instead of raising."""

    def __missing__(self, key: str) -> str:
        return {"order_id": "your order", "customer_email": "your email address"}.get(key, "that")


def verb(tool: str, arguments: dict[str, Any]) -> str:
    return VERBS.get(tool, "do that").format_map(Blank(arguments))


def capabilities(available: set[str]) -> str:
    lines = [
        "I can help you with:",
        '- the status of an order ("Where is my order ORD-1001? I\'m you@example.com")',
        "- a list of your orders, and when an order will arrive",
        "- cancelling an order, changing its shipping address or requesting a return",
        "- placing a new order, and emailing you an order confirmation",
        "- our products, and our returns, shipping, warranty and privacy policies",
    ]
    if not available & ORDER_TOOLS:
        lines.append("(The order system is unavailable right now.)")
    if not available & KNOWLEDGE_TOOLS:
        lines.append("(The product catalog and our policies are unavailable right now.)")
    return "\n".join(lines)


def not_understood(available: set[str]) -> str:
    """For a message it cannot read (another language, or words it does not know): never a guess."""
    examples = "\n".join(f"- {e}" for e in EXAMPLES)
    note = "" if available & ORDER_TOOLS else "\n(The order system is unavailable right now.)"
    return (
        "I did not understand that. I am a simple assistant that understands common requests in English,"
        f" for example:\n{examples}{note}"
    )


_SMALL_TALK: dict[str, Callable[[set[str]], str]] = {
    "help": lambda available: "Sure. " + capabilities(available),
    "greeting": lambda available: "Hello! " + capabilities(available),
    "thanks": lambda available: "You're welcome! Is there anything else I can help you with?",
}


def small_talk(kind: str, available: set[str]) -> str:
    """Replies that need no tool: help, greeting, thanks; anything else was not understood."""
    reply = _SMALL_TALK.get(kind)
    return reply(available) if reply is not None else not_understood(available)


def preface(tool: str, arguments: dict[str, Any]) -> str:
    """What it says before calling a tool, so the customer sees what it is about to do."""
    return _PREFACES.get(tool, "One moment.").format_map(Blank(arguments))


def unavailable(tool: str) -> str:
    """Plain words for a tool that is not offered right now (the MCP server or a service is down)."""
    if tool in CATALOG_TOOLS:
        what = "The product catalog is"
    elif tool == "get_policy":
        what = "Our shop policies are"
    elif tool == "search_faq":
        what = "Our FAQ is"
    elif tool in ORDER_TOOLS or tool == "create_order":
        what = "Our order system is"
    else:
        what = "Sending emails is"
    return f"{what} unavailable right now, so I can't help with that at the moment. Please try again later."


def ask(request: Request, tool: str) -> str:
    """Ask for what the request still needs, naming what is already known."""
    missing, slots = set(request.missing), request.slots
    doing = verb(tool, {"order_id": slots.get("order_id", "your order")}).replace(
        "order your order", "your order"
    )
    if request.intent.name == "arrival":
        doing = (
            f"check when {'order ' + slots['order_id'] if 'order_id' in slots else 'your order'} will arrive"
        )
    if {"order_id", "email"} <= missing:
        return (
            f"Sure, I can {doing.replace('your order', 'an order')}. Please give me the order number "
            "(like ORD-1001) and the email address you used for the order."
        )
    if "order_id" in missing:
        return f"Which order do you mean? Please give me the order number (like ORD-1001) so I can {doing}."
    if "email" in missing:
        if tool == "find_customer_orders":
            return "Please give me the email address you use with our shop, and I'll look up your orders."
        return f"To {doing} I need the email address you used for the order, for security. What is it?"
    if "address" in missing:
        return f"What is the new shipping address for order {slots.get('order_id', 'your order')}?"
    if "topic" in missing:
        return "Which policy would you like to know about: returns, shipping, warranty or privacy?"
    return "Could you tell me a little more about what you are looking for?"


def ask_for_purchase(missing: list[str], what: str) -> str:
    """The details an order still needs, all in one question."""
    wanted = {
        "name": "your full name",
        "address": "the shipping address (street, city and postcode)",
        "email": "your email address",
    }
    items = [wanted[m] for m in ("name", "address", "email") if m in missing]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"To place the order for {what} I still need {listed}."


def not_confirmed(outcome: ToolOutcome) -> str:
    """For an action the customer moved on from without confirming (a new message declines it)."""
    return f"(I did not {verb(outcome.name, outcome.arguments)}, as it was not confirmed.)"
