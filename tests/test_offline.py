"""The offline model: unit conversations driven through `stream`, then end to end over the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.agent.model import ModelFinish, TextDelta, ToolCallRequest
from msev15.agent.offline.model import OfflineModel
from msev15.agent.offline.phrases import NOTE
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import make_settings
from tests.mcp_fixtures import McpProcess, make_orders_db, running_mcp
from tests.test_api import sse_events

ORDER_TOOLS = [
    "get_order",
    "find_customer_orders",
    "cancel_order",
    "update_shipping_address",
    "request_return",
    "send_order_confirmation",
]
MCP_TOOLS = ["search_products", "get_product", "get_policy", "search_faq"]
ALICE = "alice@example.com"


def specs(*names: str) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]


ALL = specs(*ORDER_TOOLS, *MCP_TOOLS)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def conversation(*user_texts: str) -> list[dict[str, Any]]:
    """System, then the customer's messages with an assistant reply between each (a session's history)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are the shop assistant."}]
    for text in user_texts[:-1]:
        messages += [user(text), assistant("(an earlier answer)")]
    return [*messages, user(user_texts[-1])]


def with_result(
    messages: list[dict[str, Any]],
    name: str,
    arguments: dict[str, Any],
    content: Any,
    preface: str = "One moment.",
) -> list[dict[str, Any]]:
    """The messages of the next round: the assistant's tool call and the tool's JSON text."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }
    text = content if isinstance(content, str) else orjson.dumps(content).decode()
    return [
        *messages,
        {"role": "assistant", "content": preface or None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": text},
    ]


class Round:
    """One collected `stream` call."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events
        self.pieces = [e.text for e in events if isinstance(e, TextDelta)]
        self.text = "".join(self.pieces)
        self.calls = [(e.name, orjson.loads(e.arguments)) for e in events if isinstance(e, ToolCallRequest)]


async def run(messages: list[dict[str, Any]], tools: list[dict[str, Any]] = ALL) -> Round:
    return Round([event async for event in OfflineModel().stream(messages, tools)])


async def call_for(*user_texts: str, tools: list[dict[str, Any]] = ALL) -> tuple[str, dict[str, Any]]:
    found = await run(conversation(*user_texts), tools)
    assert len(found.calls) == 1, found.text
    return found.calls[0]


# The model's contract ------------------------------------------------------------------------


async def test_is_a_model_client_that_streams_in_small_pieces() -> None:
    model = OfflineModel()
    assert (model.provider, model.model_name) == ("offline", "offline")
    assert await model.check() == "ok"
    found = await run(conversation("What can you do?"))
    assert len(found.pieces) > 20 and max(len(p) for p in found.pieces) < 40
    assert isinstance(found.events[-1], ModelFinish) and found.events[-1].reason == "stop"
    await model.close()


async def test_tool_calls_come_after_the_text_with_valid_json_arguments() -> None:
    found = await run(conversation(f"Where is my order ORD-1002? I'm {ALICE}"))
    kinds = [type(e).__name__ for e in found.events]
    assert kinds[-2:] == ["ToolCallRequest", "ModelFinish"] and kinds[0] == "TextDelta"
    assert found.events[-1].reason == "tool_calls"
    assert found.calls == [("get_order", {"order_id": "ORD-1002", "customer_email": ALICE})]


async def test_deterministic() -> None:
    messages = conversation(f"Cancel ORD-1001 because I changed my mind, {ALICE}")
    first, second = await run(messages), await run(messages)
    assert first.text == second.text and first.calls == second.calls


async def test_says_it_is_offline_once_per_session() -> None:
    first = await run(conversation("hello"))
    assert first.text.startswith(NOTE) and "offline" in first.text
    later = await run(conversation("hello", "help"))
    assert "offline" not in later.text
    # The note went out with the preface of round one, so the worded result does not repeat it.
    messages = conversation(f"Where is ORD-1002? {ALICE}")
    round_one = await run(messages)
    assert round_one.text.startswith(NOTE)
    round_two = await run(
        with_result(messages, "get_order", {"order_id": "ORD-1002"}, {"status": "shipped"}, round_one.text)
    )
    assert "offline" not in round_two.text


# Recognising requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        (
            f"Where is my order ORD-1002? I'm {ALICE}",
            "get_order",
            {"order_id": "ORD-1002", "customer_email": ALICE},
        ),
        (
            "track order #1004 for bob@example.com",
            "get_order",
            {"order_id": "ORD-1004", "customer_email": "bob@example.com"},
        ),
        (f"List my orders please, {ALICE}", "find_customer_orders", {"customer_email": ALICE}),
        (f"Where is my order? I'm {ALICE}", "find_customer_orders", {"customer_email": ALICE}),
        (
            f"Cancel order ORD-1001, my email is {ALICE}",
            "cancel_order",
            {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "requested by the customer"},
        ),
        (
            f"Please cancel ORD-1001 because I found it cheaper elsewhere. {ALICE}",
            "cancel_order",
            {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "I found it cheaper elsewhere"},
        ),
        (
            f"Change the shipping address of ORD-1001 to 12 Oak Lane, Bristol BS1 4DJ. I'm {ALICE}",
            "update_shipping_address",
            {
                "order_id": "ORD-1001",
                "customer_email": ALICE,
                "shipping_address": "12 Oak Lane, Bristol BS1 4DJ",
            },
        ),
        (
            f"I want to return ORD-1003, it arrived damaged. {ALICE}",
            "request_return",
            {"order_id": "ORD-1003", "customer_email": ALICE, "reason": "it arrived damaged"},
        ),
        (
            f"Please email me the confirmation for ORD-1001, {ALICE}",
            "send_order_confirmation",
            {"order_id": "ORD-1001", "customer_email": ALICE},
        ),
        (
            "Do you sell noise cancelling headphones?",
            "search_products",
            {"query": "noise cancelling headphones"},
        ),
        ("How much are the wireless earbuds?", "search_products", {"query": "wireless earbuds"}),
        ("Tell me about hdp-nc100", "get_product", {"sku": "HDP-NC100"}),
        ("What is your return policy?", "get_policy", {"topic": "returns"}),
        ("Can I return shoes after 40 days?", "get_policy", {"topic": "returns"}),
        ("How long does shipping take?", "get_policy", {"topic": "shipping"}),
        ("Is there a warranty on headphones?", "get_policy", {"topic": "warranty"}),
        ("What do you do with my personal data?", "get_policy", {"topic": "privacy"}),
        (
            "What payment methods do you accept?",
            "search_faq",
            {"query": "What payment methods do you accept"},
        ),
        ("Do you ship internationally?", "search_faq", {"query": "Do you ship internationally"}),
    ],
)
async def test_recognises_the_common_requests(text: str, tool: str, arguments: dict[str, Any]) -> None:
    assert await call_for(text) == (tool, arguments)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Where is my order ORD-1002?", "email address"),
        ("Cancel my order please", "order number"),
        ("What orders do I have?", "email address"),
        (f"Change the address of ORD-1001, {ALICE}", "new shipping address"),
        ("What is your policy?", "returns, shipping, warranty or privacy"),
    ],
)
async def test_asks_for_what_is_missing(text: str, expected: str) -> None:
    found = await run(conversation(text))
    assert found.calls == [] and expected in found.text


async def test_a_follow_up_uses_the_order_and_email_given_earlier() -> None:
    tool, arguments = await call_for(f"Where is my order ORD-1001? I'm {ALICE}", "ok, and cancel it")
    assert tool == "cancel_order"
    assert arguments == {
        "order_id": "ORD-1001",
        "customer_email": ALICE,
        "reason": "requested by the customer",
    }


async def test_an_answer_completes_the_request_that_asked_for_it() -> None:
    assert await call_for("Where is my order ORD-1002?", ALICE) == (
        "get_order",
        {"order_id": "ORD-1002", "customer_email": ALICE},
    )
    tool, arguments = await call_for(
        "Change the address of ORD-1001", ALICE, "5 Main Street, Springfield 12345"
    )
    assert tool == "update_shipping_address"
    assert arguments["shipping_address"] == "5 Main Street, Springfield 12345"
    # A finished request is not repeated just because an email turns up later.
    found = await run(conversation(f"Where is ORD-1002? {ALICE}", "12 Oak Lane, Bristol BS1 4DJ"))
    assert found.calls == [] and "I did not understand" in found.text


async def test_noise_cancelling_is_not_a_cancellation() -> None:
    assert (await call_for("noise-cancelling headphones in stock?"))[0] == "search_products"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi!", "Hello!"),
        ("help", "I can help you with"),
        ("thank you!", "You're welcome"),
        ("banana", "I did not understand that."),
    ],
)
async def test_small_talk_and_anything_else(text: str, expected: str) -> None:
    found = await run(conversation(text))
    assert found.calls == [] and expected in found.text
    if expected in ("Hello!", "I can help you with"):
        assert "cancelling an order" in found.text  # the list of what it can do
    if text == "banana":
        assert '"Cancel ORD-1001, I\'m you@example.com"' in found.text  # examples of what it understands


# Only the tools it was given --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Do you sell noise cancelling headphones?", "product catalog is unavailable right now"),
        ("What is HDP-NC100?", "product catalog is unavailable right now"),
        ("What is your return policy?", "policies are unavailable right now"),
        ("What payment methods do you accept?", "FAQ is unavailable right now"),
    ],
)
async def test_says_plainly_when_the_mcp_tools_are_absent(text: str, expected: str) -> None:
    found = await run(conversation(text), specs(*ORDER_TOOLS))
    assert found.calls == [] and expected in found.text


async def test_never_calls_a_tool_it_was_not_given() -> None:
    found = await run(conversation(f"Where is my order ORD-1002? I'm {ALICE}"), [])
    assert found.calls == [] and "order system is unavailable" in found.text
    # Without get_product it still finds a sku through the search.
    assert await call_for("What is HDP-NC100?", tools=specs("search_products")) == (
        "search_products",
        {"query": "HDP-NC100"},
    )


# Wording the results ---------------------------------------------------------------------------

ORDER = {
    "order_id": "ORD-1002",
    "status": "shipped",
    "customer_email": ALICE,
    "shipping_address": "12 Oak Lane, Bristol",
    "items": [
        {"sku": "HDP-NC100", "name": "Noise Cancelling Headphones", "quantity": 1, "line_total": "$199.99"}
    ],
    "total": "$199.99",
}


@pytest.mark.parametrize(
    ("name", "arguments", "content", "expected"),
    [
        (
            "get_order",
            {"order_id": "ORD-1002"},
            ORDER,
            ["Order ORD-1002 is shipped", "Noise Cancelling", "$199.99"],
        ),
        (
            "find_customer_orders",
            {"customer_email": ALICE},
            {"orders": [{"order_id": "ORD-1003", "status": "delivered", "total": "$89.99", "item_count": 1}]},
            ["1 order", "ORD-1003: delivered, 1 item, $89.99"],
        ),
        ("find_customer_orders", {"customer_email": "x@example.com"}, {"orders": []}, ["no orders"]),
        (
            "cancel_order",
            {"order_id": "ORD-1001", "reason": "changed my mind"},
            {**ORDER, "order_id": "ORD-1001", "status": "cancelled"},
            ["order ORD-1001 is cancelled (reason: changed my mind)"],
        ),
        (
            "update_shipping_address",
            {"order_id": "ORD-1001"},
            {**ORDER, "order_id": "ORD-1001", "status": "pending", "shipping_address": "5 Main St 1"},
            ["shipped to 5 Main St 1"],
        ),
        (
            "request_return",
            {"order_id": "ORD-1003", "reason": "broken"},
            {**ORDER, "status": "return_requested"},
            ["requested a return for order ORD-1002"],
        ),
        (
            "send_order_confirmation",
            {"order_id": "ORD-1001", "customer_email": ALICE},
            {"order_id": "ORD-1001", "to": ALICE, "status": "undelivered", "note": "saved in the outbox"},
            ["confirmation of order ORD-1001", "but it was not sent (saved in the outbox)"],
        ),
        (
            "search_products",
            {"query": "headphones"},
            {
                "products": [
                    {
                        "sku": "HDP-NC100",
                        "name": "Headphones",
                        "price": "199.99",
                        "currency": "USD",
                        "stock": 3,
                    }
                ]
            },
            ['for "headphones"', "Headphones (HDP-NC100): $199.99, in stock (3 available)"],
        ),
        ("search_products", {"query": "zebra"}, {"count": 0, "products": []}, ["couldn't find any products"]),
        (
            "get_policy",
            {"topic": "returns"},
            {"title": "Returns and refunds", "summary": "Within 30 days.", "details": ["Unused items."]},
            ["Returns and refunds", "Within 30 days.", "- Unused items."],
        ),
        (
            "search_faq",
            {"query": "pay"},
            {"results": [{"question": "How can I pay?", "answer": "By card or PayPal."}]},
            ["By card or PayPal."],
        ),
    ],
)
async def test_words_an_answer_from_the_tool_result(
    name: str, arguments: dict[str, Any], content: Any, expected: list[str]
) -> None:
    found = await run(with_result(conversation("(the request)"), name, arguments, content))
    assert found.calls == [] and found.text.startswith("\n\n")  # a new paragraph after the preface
    for part in expected:
        assert part in found.text


async def test_a_refusal_is_repeated_plainly() -> None:
    reason = "order ORD-1002 is shipped, so it can no longer be cancelled"
    found = await run(
        with_result(
            conversation("cancel"), "cancel_order", {"order_id": "ORD-1002"}, {"ok": False, "error": reason}
        )
    )
    assert f"I couldn't cancel order ORD-1002: {reason}." in found.text
    missing = {"ok": False, "error": "I could not find order ORD-1009 for that email"}
    found = await run(with_result(conversation("where"), "get_order", {"order_id": "ORD-1009"}, missing))
    assert "could not find order ORD-1009" in found.text and "check the order number" in found.text


async def test_a_declined_action_is_reported_as_not_done() -> None:
    declined = {"ok": False, "error": "declined by the customer"}
    found = await run(with_result(conversation("cancel"), "cancel_order", {"order_id": "ORD-1001"}, declined))
    assert "I did not cancel order ORD-1001" in found.text and "Nothing was changed" in found.text


def approval_turn(
    history: list[dict[str, Any]],
    name: str,
    arguments: dict[str, Any],
    error: str | None,
    typed: str | None = None,
) -> list[Any]:
    """What the agent sends after a decision: the typed message (if any), then the decided call."""
    call = {
        "id": "apr_1",
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }
    content = (
        orjson.dumps({"ok": False, "error": error}).decode()
        if error
        else orjson.dumps({"status": "cancelled"}).decode()
    )
    return [
        *history,
        *([user(typed)] if typed is not None else []),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "apr_1", "content": content},
    ]


async def test_outcome_of_an_approval_and_of_a_typed_answer() -> None:
    history = [
        *conversation(f"Cancel ORD-1001, {ALICE}"),
        assistant('Please confirm: Cancel order ORD-1001. Reply "yes" to go ahead or "no" to leave it.'),
    ]
    arguments = {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "requested by the customer"}
    done = "Done: order ORD-1001 is cancelled (reason: requested by the customer)."
    approved = await run(approval_turn(history, "cancel_order", arguments, None))
    assert approved.text == done
    # The service read a typed "yes" and ran the call: the model words the outcome, nothing more.
    typed_yes = await run(approval_turn(history, "cancel_order", arguments, None, typed="yes"))
    assert typed_yes.calls == [] and typed_yes.text == done
    declined = "declined by the customer"
    typed_no = await run(approval_turn(history, "cancel_order", arguments, declined, typed="no"))
    assert typed_no.calls == [] and "I did not cancel order ORD-1001" in typed_no.text
    # Moving on to something else declined it: the answer says so, then serves the new request.
    moved_on = await run(
        approval_turn(history, "cancel_order", arguments, declined, typed="What is your return policy?")
    )
    assert moved_on.calls == [("get_policy", {"topic": "returns"})]
    assert moved_on.text.startswith("(I did not cancel order ORD-1001, as it was not confirmed.)")


@pytest.mark.parametrize(
    "content",
    [
        "plain text, not JSON",
        "[1, 2, 3]",
        "null",
        "",
        '{"order": {"status": null, "items": "weird", "total": {"a": 1}}}',
        '{"status": 5, "items": [1, null, {"name": null}], "shipping_address": {"city": "Bristol"}}',
        '{"ok": false}',
    ],
)
@pytest.mark.parametrize("name", [*ORDER_TOOLS, *MCP_TOOLS, "unknown_tool"])
async def test_never_crashes_on_unexpected_result_shapes(name: str, content: str) -> None:
    found = await run(with_result(conversation("q"), name, {}, content))
    assert found.text.strip() and found.calls == []


async def test_tolerates_odd_messages() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "Where is ORD-1002?"}]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": ALICE},
    ]
    assert (await run(messages)).calls == [("get_order", {"order_id": "ORD-1002", "customer_email": ALICE})]
    assert "anything else" in (await run([])).text


# Every tool, from the customer's own words (issue 15) ------------------------------------------------

BOB = "bob@example.com"
MOUSE = {
    "sku": "MSE-WL500",
    "name": "Wireless Mouse",
    "price": "29.99",
    "currency": "USD",
    "stock": 60,
    "in_stock": True,
}
SHIPPING = {
    "topic": "shipping",
    "title": "Shipping and delivery",
    "summary": "Orders ship within 1 business day; standard delivery takes 3-5 business days.",
    "details": [
        "Standard shipping: 3-5 business days, $4.99.",
        "Express shipping: 1-2 business days, $14.99.",
    ],
}
WITH_PRICES = [
    {
        "type": "function",
        "function": {
            "name": "search_products",
            "parameters": {"properties": {"query": {}, "sort": {}, "max_price": {}}},
        },
    },
    *specs(*ORDER_TOOLS, "create_order", "get_product", "get_policy", "search_faq"),
]


def earlier_turn(text: str, name: str, arguments: dict[str, Any], content: Any, answer: str) -> list[Any]:
    """A finished turn as the agent sends it back (agent/history.py): the call, its result, the answer."""
    call = {
        "id": f"call_{name}",
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }
    return [
        user(text),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": orjson.dumps(content).decode()},
        assistant(answer),
    ]


async def test_a_purchase_looks_the_product_up_asks_for_the_name_then_proposes() -> None:
    text = (
        "I want to order 2 Wireless Mouse (MSE-WL500) shipped to 77 Elm Street, Boston MA 02110"
        f" - email {BOB}"
    )
    first = await run(conversation(text), WITH_PRICES)
    assert first.calls == [("get_product", {"sku": "MSE-WL500"})]
    asked = await run(
        with_result(conversation(text), "get_product", {"sku": "MSE-WL500"}, MOUSE), WITH_PRICES
    )
    assert asked.calls == []
    assert "2 × Wireless Mouse (MSE-WL500, $29.99 each) I still need your full name" in asked.text
    history = earlier_turn(text, "get_product", {"sku": "MSE-WL500"}, MOUSE, asked.text)
    proposed = await run([*history, user("Bob Smith")], WITH_PRICES)
    assert proposed.calls == [
        (
            "create_order",
            {
                "customer_email": BOB,
                "customer_name": "Bob Smith",
                "items": [{"sku": "MSE-WL500", "quantity": 2}],
                "shipping_address": "77 Elm Street, Boston MA 02110",  # no stray " -"
            },
        )
    ]


async def test_buying_one_of_what_the_last_search_showed() -> None:
    found = {"query": "wireless mice", "count": 1, "sorted_by": "price_low_to_high", "products": [MOUSE]}
    history = earlier_turn(
        "Do you sell wireless mice? What's the cheapest one?",
        "search_products",
        {"query": "wireless mice", "sort": "price_low_to_high"},
        found,
        "The cheapest match is Wireless Mouse.",
    )
    buy = f"ok I'd like to buy one, ship to 1 Main St, Springfield, IL 62701. I'm {BOB}"
    asked = await run([*history, user(buy)], WITH_PRICES)
    assert asked.calls == [] and "1 × Wireless Mouse (MSE-WL500, $29.99 each)" in asked.text
    assert "your full name" in asked.text and "address" not in asked.text.split("need")[1]
    proposed = await run([*history, user(buy), assistant(asked.text), user("Bob Smith")], WITH_PRICES)
    [(name, arguments)] = proposed.calls
    assert name == "create_order" and arguments["shipping_address"] == "1 Main St, Springfield, IL 62701"
    assert arguments["items"] == [{"sku": "MSE-WL500", "quantity": 1}] and arguments["customer_email"] == BOB


async def test_a_product_named_in_words_is_searched_for_first() -> None:
    found = await run(conversation("I would like to buy the fitness watch please"), WITH_PRICES)
    assert found.calls == [("search_products", {"query": "fitness watch"})]
    without_catalog = await run(
        conversation("I'd like to buy the fitness watch"), specs(*ORDER_TOOLS, "create_order")
    )
    assert without_catalog.calls == [] and "SKU" in without_catalog.text


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        (
            "Do you sell wireless mice? What's the cheapest one?",
            {"query": "wireless mice", "sort": "price_low_to_high"},
        ),
        ("any headphones under $50?", {"query": "headphones", "max_price": 50.0}),
        ("What is the most expensive monitor you have?", {"query": "monitor", "sort": "price_high_to_low"}),
    ],
)
async def test_search_passes_the_price_wishes(text: str, arguments: dict[str, Any]) -> None:
    assert await call_for(text, tools=WITH_PRICES) == ("search_products", arguments)


async def test_a_server_without_price_arguments_reads_them_from_the_query() -> None:
    assert await call_for("Do you sell wireless mice? What's the cheapest one?") == (
        "search_products",
        {"query": "cheapest wireless mice"},
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"I'd like to return ORD-1003. They're too tight. {ALICE}", "They're too tight"),
        (f"Return ORD-1003 please, they're too tight, {ALICE}", "they're too tight"),
        (f"Return ORD-1003 because the strap broke after a week. {ALICE}", "the strap broke after a week"),
        (f"Cancel ORD-1001, {ALICE}, thanks", "requested by the customer"),
    ],
)
async def test_the_customers_own_reason_is_kept(text: str, reason: str) -> None:
    _, arguments = await call_for(text)
    assert arguments["reason"] == reason


async def test_a_reason_given_while_the_action_waits_changes_it() -> None:
    arguments = {"order_id": "ORD-1003", "customer_email": ALICE, "reason": "requested by the customer"}
    history = [*conversation(f"Return ORD-1003, {ALICE}"), assistant("Please confirm: ...")]
    found = await run(
        approval_turn(
            history, "request_return", arguments, "declined by the customer", typed="They're too tight"
        )
    )
    assert found.calls == [("request_return", {**arguments, "reason": "They're too tight"})]
    assert 'I noted "They\'re too tight" as the reason' in found.text


async def test_when_will_it_arrive_reads_the_order_and_the_shipping_policy() -> None:
    order = {"order_id": "ORD-1002", "status": "shipped", "items": []}
    history = earlier_turn(
        f"Where is ORD-1002? {ALICE}",
        "get_order",
        {"order_id": "ORD-1002", "customer_email": ALICE},
        order,
        "Order ORD-1002 is shipped.",
    )
    first = await run([*history, user("when will it arrive?")])
    assert first.calls == [("get_policy", {"topic": "shipping"})]  # the order is known from turn one
    messages = with_result(
        [*history, user("when will it arrive?")], "get_policy", {"topic": "shipping"}, SHIPPING, first.text
    )
    answer = await run(messages)
    assert answer.calls == [] and "Order ORD-1002 has shipped" in answer.text
    assert "standard delivery takes 3-5 business days (express: 1-2 business days)" in answer.text
    assert "Items" not in answer.text  # not the whole order again
    # Without the order in the history, it is looked up together with the policy.
    fresh = await run(conversation(f"When will ORD-1004 arrive? {BOB}"))
    assert fresh.calls == [
        ("get_order", {"order_id": "ORD-1004", "customer_email": BOB}),
        ("get_policy", {"topic": "shipping"}),
    ]


async def test_several_requests_in_one_message_look_up_first_then_propose() -> None:
    text = f"Where is ORD-1002, and please cancel ORD-1001. I'm {ALICE}"
    first = await run(conversation(text))
    assert first.calls == [("get_order", {"order_id": "ORD-1002", "customer_email": ALICE})]
    second = await run(with_result(conversation(text), "get_order", first.calls[0][1], ORDER, first.text))
    assert second.calls == [
        (
            "cancel_order",
            {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "requested by the customer"},
        )
    ]
    assert "Order ORD-1002 is shipped" in second.text  # the lookup is answered before the request to confirm
    both = await run(conversation(f"Cancel ORD-1001 and ORD-1003, {ALICE}"))
    assert [a["order_id"] for _, a in both.calls] == ["ORD-1001", "ORD-1003"]
    asked = await run(conversation("What is your return policy, and where is my order ORD-1002?"))
    assert asked.calls == [("get_policy", {"topic": "returns"})]
    answered = await run(
        with_result(
            conversation("What is your return policy, and where is my order ORD-1002?"),
            "get_policy",
            {"topic": "returns"},
            {"title": "Returns", "summary": "30 days."},
            asked.text,
        )
    )
    assert "30 days." in answered.text and "email address" in answered.text  # answered, and the rest listed


@pytest.mark.parametrize(
    "text",
    [
        "quiero cancelar mi pedido ORD-1004",
        "¿Dónde está mi pedido ORD-1002?",
        "Bonjour, je veux annuler ma commande ORD-1001",
        "Hallo, wo ist meine Bestellung ORD-1002?",
        "asdf qwerty",
    ],
)
async def test_what_it_cannot_read_gets_a_plain_i_did_not_understand(text: str) -> None:
    found = await run(conversation(f"{text} {ALICE}"))
    assert found.calls == []
    assert "I did not understand that." in found.text and '"Where is my order ORD-1001?' in found.text


# End to end through the HTTP API ------------------------------------------------------------------


def services(app: Quart) -> Services:
    found: Services = app.extensions[EXTENSION_KEY]
    return found


async def order_status(app: Quart, order_id: str) -> str:
    repo = services(app).orders
    assert repo is not None
    order = await repo.get_order("default", order_id, ALICE)
    return str(order["status"])


@pytest.fixture
async def direct_app(tmp_path: Path) -> AsyncIterator[Quart]:
    """The offline model with actions that run at once (no confirmation step)."""
    application = create_app(make_settings(tmp_path, require_confirmation=False))
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


async def chat_stream(client: TestClientProtocol, session: str, message: str) -> list[dict[str, Any]]:
    response = await client.post("/api/v1/chat/stream", json={"session_id": session, "message": message})
    assert response.status_code == 200
    events = sse_events(await response.get_data())
    assert events[-1]["type"] == "done", events[-1]
    return events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


async def test_order_status_over_the_stream(client: TestClientProtocol) -> None:
    events = await chat_stream(client, "e1", f"Where is my order ORD-1002? I'm {ALICE}")
    [call] = of_type(events, "tool_call")
    assert call["name"] == "get_order" and call["arguments"] == {
        "order_id": "ORD-1002",
        "customer_email": ALICE,
    }
    [result] = of_type(events, "tool_result")
    assert result["ok"] is True and result["id"] == call["id"]
    assert orjson.loads(result["content"])["status"] == "shipped"
    message = events[-1]["message"]
    assert "Order ORD-1002 is shipped" in message and message.startswith(NOTE)
    tokens = of_type(events, "token")
    assert len(tokens) > 10 and "".join(t["content"] for t in tokens) == message


async def test_cancel_runs_and_restores_stock(direct_app: Quart) -> None:
    repo = services(direct_app).orders
    assert repo is not None
    items = (await repo.get_order("default", "ORD-1001", ALICE))["items"]
    stock_before = {i["sku"]: (await repo.product("default", i["sku"]) or {})["stock"] for i in items}

    client = direct_app.test_client()
    events = await chat_stream(client, "e2", f"Cancel order ORD-1001, my email is {ALICE}")
    [result] = of_type(events, "tool_result")
    assert result["name"] == "cancel_order" and result["ok"] is True
    assert "order ORD-1001 is cancelled" in events[-1]["message"]
    assert await order_status(direct_app, "ORD-1001") == "cancelled"
    for item in items:
        assert (await repo.product("default", item["sku"]) or {})["stock"] == stock_before[
            item["sku"]
        ] + item["quantity"]

    history = await (await client.get("/api/v1/sessions/e2/history")).get_json()
    [recorded] = history["messages"][-1]["tool_calls"]
    assert recorded["name"] == "cancel_order" and recorded["ok"] is True
    assert recorded["arguments"]["reason"] == "requested by the customer"


async def test_follow_ups_refusals_and_the_confirmation_mail(direct_app: Quart) -> None:
    client = direct_app.test_client()
    await chat_stream(client, "e3", f"Where is my order ORD-1002? I'm {ALICE}")
    events = await chat_stream(client, "e3", "ok, cancel it")
    [result] = of_type(events, "tool_result")
    assert result["ok"] is False and "shipped" in result["error"]
    message = events[-1]["message"]
    assert "I couldn't cancel order ORD-1002" in message and "shipped" in message
    assert "offline" not in message  # said once per session, in the first answer
    assert await order_status(direct_app, "ORD-1002") == "shipped"

    events = await chat_stream(client, "e3", "Please email me the confirmation for ORD-1001")
    [call] = of_type(events, "tool_call")
    assert call["name"] == "send_order_confirmation"
    assert call["arguments"] == {"order_id": "ORD-1001", "customer_email": ALICE}
    assert of_type(events, "tool_result")[0]["ok"] is True
    assert "confirmation of order ORD-1001" in events[-1]["message"]
    repo = services(direct_app).orders
    assert repo is not None
    async with repo.reading() as db:
        row = await db.fetchone("SELECT count(*) FROM outbox WHERE recipient = ?", (ALICE,))
    assert row is not None and row[0] == 1


async def test_cancel_waits_for_approval_then_words_the_outcome(
    app: Quart, client: TestClientProtocol
) -> None:
    events = await chat_stream(client, "e4", f"Cancel ORD-1001, I'm {ALICE}")
    [first] = of_type(events, "approval_required")
    assert first["name"] == "cancel_order" and first["arguments"]["order_id"] == "ORD-1001"
    assert events[-1]["message"].startswith(NOTE) and "Please confirm" in events[-1]["message"]
    assert await order_status(app, "ORD-1001") == "pending"

    # Typing "Confirm" approves it, exactly as the approval does (API.md "Confirmation").
    events = await chat_stream(client, "e4", "Confirm")
    [result] = of_type(events, "tool_result")
    assert result["id"] == first["id"] and result["ok"] is True
    assert of_type(events, "approval_required") == []
    assert events[-1]["message"] == "Done: order ORD-1001 is cancelled (reason: requested by the customer)."
    assert await order_status(app, "ORD-1001") == "cancelled"

    # Asking again is refused at once: nothing to confirm.
    events = await chat_stream(client, "e4", "Cancel ORD-1001 please")
    assert of_type(events, "approval_required") == []
    [refused] = of_type(events, "tool_result")
    assert refused["ok"] is False and "already cancelled" in refused["error"]
    assert "already cancelled" in events[-1]["message"]


async def test_mcp_down_says_the_catalog_is_unavailable(client: TestClientProtocol) -> None:
    events = await chat_stream(client, "e5", "Do you sell noise cancelling headphones?")
    assert of_type(events, "tool_call") == []
    assert "product catalog is unavailable right now" in events[-1]["message"]


@pytest.fixture(scope="module")
def shop_mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpProcess]:
    db = make_orders_db(tmp_path_factory.mktemp("offline-mcp") / "shop.db")
    with running_mcp(db) as server:
        yield server


async def test_product_and_policy_answers_from_the_real_mcp_server(
    tmp_path: Path, shop_mcp: McpProcess
) -> None:
    application = create_app(make_settings(tmp_path, mcp_server_url=shop_mcp.url))
    async with application.test_app() as test_app:
        client = test_app.app.test_client()  # type: ignore[attr-defined]
        events = await chat_stream(client, "e6", "What is your return policy?")
        [result] = of_type(events, "tool_result")
        assert result["name"] == "get_policy" and result["ok"] is True
        assert "30 days" in events[-1]["message"] and "Returns and refunds" in events[-1]["message"]

        events = await chat_stream(client, "e6", "Do you sell noise cancelling headphones?")
        assert of_type(events, "tool_call")[0]["arguments"] == {"query": "noise cancelling headphones"}
        assert "Noise Cancelling Headphones (HDP-NC100): $199.99" in events[-1]["message"]
