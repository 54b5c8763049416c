"""The answers the offline model words from tool results, whatever their shape."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from msev15.agent.approvals import DECLINED
from msev15.agent.offline.phrases import KNOWLEDGE_TOOLS, ORDER_TOOLS, Blank, capabilities, verb
from msev15.agent.offline.reading import ToolOutcome

log = logging.getLogger(__name__)


# Wording tool results -------------------------------------------------------------------


def word_outcome(outcome: ToolOutcome) -> str:
    """A plain answer from one tool result, whatever its shape."""
    doing = verb(outcome.name, outcome.arguments)
    if not outcome.ok:
        if outcome.error.strip() == DECLINED:
            return f"Understood: I did not {doing}. Nothing was changed."
        hint = ""
        if outcome.name in ORDER_TOOLS | {"send_order_confirmation"} and re.search(
            r"not (?:be )?f(?:ou|i)nd|no such order|there is no order", outcome.error, re.I
        ):
            hint = " Please check the order number and the email address you used for the order."
        return f"I couldn't {doing}: {_sentence(outcome.error)}{hint}"
    wording = _WORDING.get(outcome.name, _word_generic)
    try:
        return wording(outcome.arguments, outcome.data)
    except Exception:  # an unexpected result shape: fall back to listing what came back
        log.warning("unexpected %s result shape; worded generically", outcome.name, exc_info=True)
        return _word_generic(outcome.arguments, outcome.data)


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
        values = Blank({**arguments, **{k: _plain(v) for k, v in order.items() if _plain(v)}})
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
    found = _record(data)
    query = _first(found, "query") or arguments.get("query") or arguments.get("sku") or "that"
    cap = _first(found, "max_price") or arguments.get("max_price")
    within = f" at or under ${float(cap):.2f}" if cap is not None and _number(cap) else ""
    if not products:
        tip = "Try other words, or ask about a category."
        return f'I couldn\'t find any products matching "{query}"{within}. {tip}'
    order = _first(found, "sorted_by") or arguments.get("sort")
    if order in ("price_low_to_high", "price_high_to_low"):
        which = "cheapest" if order == "price_low_to_high" else "most expensive"
        lines = [f'The {which} match for "{query}"{within} is {product_line(products[0])}.']
        if len(products) > 1:
            lines += ["Other matches:", *(f"- {product_line(p)}" for p in products[1:8])]
        return "\n".join(lines)
    lines = [f'Here is what I found for "{query}"{within}:']
    lines += [f"- {product_line(p)}" for p in products[:8]]
    return "\n".join(lines)


def _word_created(arguments: dict[str, Any], data: Any) -> str:
    order = _record(data, "order")
    order_id = _first(order, "order_id", "id") or "your new order"
    items = _records(order, "items", "lines")
    listed = "; ".join(_item(i) for i in items[:20]) or "your items"
    text = f"Done: I placed order {order_id}: {listed}."
    total = _plain(_first(order, "total", "total_price"))
    if total:
        text += f" Total: {total}."
    address = _first(order, "shipping_address", "address")
    if address:
        text += f" It will be shipped to {_plain(address)}."
    status = str(_first(order, "status") or "").lower()
    if status:
        text += f" Order {order_id} " + (_STATUS_TEXT.get(status) or f"has the status {status}") + "."
    return text


def word_arrival(order: dict[str, Any], policy: dict[str, Any] | None) -> str:
    """When an order will arrive: its status, then the delivery times of the shipping policy."""
    order_id = _first(order, "order_id", "id") or "your order"
    status = str(_first(order, "status") or "").lower()
    times = _delivery_times(policy)
    if status in ("pending", "processing"):
        text = f"Order {order_id} {_STATUS_TEXT[status]}, so it has not shipped yet."
        if times:
            text += f" Orders leave our warehouse within 1 business day, then {times}."
            text += " You will get a tracking link by email as soon as it ships."
    elif status == "shipped":
        text = f"Order {order_id} has shipped and is on its way to you."
        if times:
            text += f" From shipping, {times}, so it should reach you within that time."
    elif status in ("delivered", "return_requested"):
        text = f"Order {order_id} was already delivered"
        text += ", and a return has been requested for it." if status == "return_requested" else "."
        text += " If you cannot find it, please check with your neighbours or the carrier."
    elif status in ("cancelled", "canceled"):
        return f"Order {order_id} is cancelled, so it will not be delivered."
    else:
        return f"Order {order_id} has the status {status or 'unknown'}; I can't tell when it will arrive."
    if policy is None and status in ("pending", "processing", "shipped"):
        text += " (I can't read our shipping policy right now, so I can't give you delivery times.)"
    return text


_DAYS = re.compile(r"\b(standard|express|international)\b[^.;]*?(\d+)\s*-\s*(\d+)\s+business days", re.I)


def _delivery_times(policy: dict[str, Any] | None) -> str:
    """ "standard delivery takes 3-5 business days (express: 1-2 business days)", from the policy's text."""
    if not policy:
        return ""
    record = _record(policy, "policy")
    lines = [str(x) for x in record.get("details") or [] if isinstance(x, str)]
    found: dict[str, str] = {}
    for line in [str(record.get("summary") or ""), *lines]:
        for kind, low, high in _DAYS.findall(line):
            found.setdefault(kind.lower(), f"{low}-{high} business days")
    if "standard" not in found:
        return str(record.get("summary") or "").rstrip(".").lower()
    text = f"standard delivery takes {found['standard']}"
    others = [f"{kind}: {days}" for kind, days in found.items() if kind != "standard"]
    return text + (f" ({'; '.join(others)})" if others else "")


def _word_product(arguments: dict[str, Any], data: Any) -> str:
    product = _record(data, "product")
    if not product:
        return _word_generic(arguments, data)
    text = product_line(product)
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
        return "I couldn't find an answer to that in our FAQ. " + capabilities(
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
    "create_order": _word_created,
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


def product_line(product: dict[str, Any]) -> str:
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


def product_label(product: dict[str, Any]) -> str:
    """ "Wireless Mouse (MSE-WL500, $29.99 each)", or just the sku when nothing more is known."""
    name, sku, price = _first(product, "name"), _first(product, "sku"), _price(product)
    if not name:
        return str(sku or "the product")
    details = ", ".join(str(x) for x in (sku, f"{price} each" if price else None) if x)
    return f"{name} ({details})" if details else str(name)


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


def _number(value: Any) -> bool:
    try:
        return value is not None and float(value) > 0
    except (TypeError, ValueError):
        return False


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
