"""The conversation corpus: customers' conversations as data (tests/conversations/*.json), each run
against the offline model through the real HTTP API of a fresh app, with the bundled MCP server.

Every turn states what must happen: the tool calls with their results, the actions refused at once,
the approvals asked for and words the answer must (not) contain. After the last turn the orders
and the mails in the outbox must be exactly as stated. tests/conversations/README.md has the format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import make_settings
from tests.mcp_fixtures import McpProcess, make_orders_db, running_mcp

CORPUS = Path(__file__).parent / "conversations"
TURN_KEYS = {"customer", "calls", "refused", "approvals", "says", "never_says"}
CONVERSATION_KEYS = {"id", "title", "source", "catalog", "transport", "turns", "orders", "mails"}


def load_corpus() -> list[dict[str, Any]]:
    conversations: list[dict[str, Any]] = []
    for path in sorted(CORPUS.glob("*.json")):
        for conversation in json.loads(path.read_text("utf-8")):
            conversation["file"] = path.name
            conversations.append(conversation)
    return conversations


CONVERSATIONS = load_corpus()


@pytest.fixture(scope="module")
def shop_mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpProcess]:
    db = make_orders_db(tmp_path_factory.mktemp("corpus-mcp") / "shop.db")
    with running_mcp(db) as server:
        yield server


@dataclass
class Turn:
    """What one customer message produced, whichever endpoint carried it."""

    message: str
    calls: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    approvals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


async def over_sse(client: TestClientProtocol, session: str, text: str) -> Turn:
    response = await client.post("/api/v1/chat/stream", json={"session_id": session, "message": text})
    assert response.status_code == 200, await response.get_data()
    events = [
        orjson.loads(line[len("data: ") :])
        for line in (await response.get_data(as_text=True)).split("\n")
        if line.startswith("data: ")
    ]
    assert events and events[-1]["type"] == "done", events[-1:]
    turn = Turn(events[-1]["message"])
    called = {e["id"]: e for e in events if e["type"] == "tool_call"}
    for event in events:
        if event["type"] == "tool_result" and event["id"] in called:
            turn.calls.append((event["name"], called[event["id"]]["arguments"], event["ok"]))
        elif event["type"] == "tool_result":
            assert event["ok"] is False, event  # only a refusal comes without its call
            turn.refused.append((event["name"], event["error"]))
        elif event["type"] == "approval_required":
            turn.approvals.append((event["name"], event["arguments"]))
    return turn


async def over_json(client: TestClientProtocol, session: str, text: str) -> Turn:
    response = await client.post("/api/v1/chat", json={"session_id": session, "message": text})
    body = await response.get_json()
    assert response.status_code == 200, body
    turn = Turn(body["message"])
    turn.calls = [(c["name"], c["arguments"], c["ok"]) for c in body["tool_calls"]]
    turn.approvals = [(a["name"], a["arguments"]) for a in body.get("approvals_required", [])]
    return turn


def check_turn(number: int, expected: dict[str, Any], got: Turn) -> None:
    where = f"turn {number} ({expected['customer']!r}) answered {got.message!r}"
    assert set(expected) <= TURN_KEYS, f"{where}: unknown keys {set(expected) - TURN_KEYS}"
    calls = [(name, args, ok) for name, args, ok in expected.get("calls", [])]
    assert [(n, ok) for n, _, ok in got.calls] == [(n, ok) for n, _, ok in calls], (
        f"{where}: calls {got.calls}"
    )
    for (_, args, _), (_, wanted, _) in zip(got.calls, calls, strict=True):
        assert subset(wanted, args), f"{where}: arguments {args} lack {wanted}"
    assert [n for n, _ in got.refused] == [n for n, _ in expected.get("refused", [])], (
        f"{where}: {got.refused}"
    )
    for (_, error), (_, reason) in zip(got.refused, expected.get("refused", []), strict=True):
        assert reason in error, f"{where}: refusal {error!r} lacks {reason!r}"
    approvals = expected.get("approvals", [])
    assert [n for n, _ in got.approvals] == [n for n, _ in approvals], f"{where}: approvals {got.approvals}"
    for (_, args), (_, wanted) in zip(got.approvals, approvals, strict=True):
        assert subset(wanted, args), f"{where}: approval {args} lacks {wanted}"
    for words in expected.get("says", []):
        assert words in got.message, f"{where}: missing {words!r}"
    for words in expected.get("never_says", []):
        assert words not in got.message, f"{where}: should not say {words!r}"
    assert "something went wrong" not in got.message, where


def subset(wanted: Any, got: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(got, dict) and all(k in got and subset(v, got[k]) for k, v in wanted.items())
    return bool(wanted == got)


ORDER_FIELDS = (
    "status",
    "customer_email",
    "customer_name",
    "shipping_address",
    "cancel_reason",
    "return_reason",
)
_ORDER = (
    "SELECT o.status, o.customer_email, c.name, o.shipping_address, o.cancel_reason, o.return_reason,"
    " o.total_cents FROM orders o JOIN customers c ON c.tenant_id = o.tenant_id"
    " AND c.email = o.customer_email WHERE o.tenant_id = 'default' AND o.id = ?"
)
_ITEMS = "SELECT sku, quantity FROM order_items WHERE tenant_id = 'default' AND order_id = ? ORDER BY line_no"


async def orders_now(app: Quart, order_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """The orders as the database holds them: the fields a conversation may state, or None."""
    services: Services = app.extensions[EXTENSION_KEY]
    assert services.orders is not None
    found: dict[str, dict[str, Any] | None] = {}
    async with services.orders.reading() as db:
        for order_id in order_ids:
            row = await db.fetchone(_ORDER, (order_id,))
            items = [[r[0], r[1]] for r in await db.fetchall(_ITEMS, (order_id,))]
            found[order_id] = None
            if row is not None:
                found[order_id] = {
                    **dict(zip(ORDER_FIELDS, row[:6], strict=True)),
                    "total": f"${row[6] / 100:.2f}",
                    "items": items,
                }
    return found


async def mails_now(app: Quart) -> list[dict[str, str]]:
    services: Services = app.extensions[EXTENSION_KEY]
    assert services.orders is not None
    async with services.orders.reading() as db:
        rows = await db.fetchall("SELECT recipient, subject FROM outbox ORDER BY created_at, rowid")
    return [{"to": r[0], "subject": r[1]} for r in rows]


@pytest.fixture
async def corpus_app(
    request: pytest.FixtureRequest, tmp_path: Path, shop_mcp: McpProcess
) -> AsyncIterator[Quart]:
    conversation: dict[str, Any] = request.param
    overrides = {"mcp_server_url": shop_mcp.url} if conversation.get("catalog", True) else {}
    application = create_app(make_settings(tmp_path, **overrides))
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("corpus_app", "conversation"),
    [pytest.param(c, c, id=c["id"]) for c in CONVERSATIONS],
    indirect=["corpus_app"],
)
async def test_conversation(corpus_app: Quart, conversation: dict[str, Any]) -> None:
    assert set(conversation) - {"file"} <= CONVERSATION_KEYS, set(conversation) - CONVERSATION_KEYS
    client = corpus_app.test_client()
    send = over_json if conversation.get("transport") == "json" else over_sse
    for number, expected in enumerate(conversation["turns"], 1):
        check_turn(number, expected, await send(client, conversation["id"], expected["customer"]))
    wanted_orders: dict[str, Any] = conversation.get("orders", {})
    now = await orders_now(corpus_app, list(wanted_orders))
    for order_id, wanted in wanted_orders.items():
        if wanted is None:
            assert now[order_id] is None, f"{order_id} should not exist: {now[order_id]}"
        else:
            assert now[order_id] is not None and subset(wanted, now[order_id]), f"{order_id}: {now[order_id]}"
    mails = await mails_now(corpus_app)
    wanted_mails = conversation.get("mails", [])
    assert len(mails) == len(wanted_mails), mails
    for mail, wanted_mail in zip(mails, wanted_mails, strict=True):
        assert mail["to"] == wanted_mail["to"] and wanted_mail["subject"] in mail["subject"], mail


def test_the_corpus_is_large_unique_and_holds_the_issue_transcript() -> None:
    ids = [c["id"] for c in CONVERSATIONS]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert all(len(c["turns"]) >= 1 for c in CONVERSATIONS)
    assert sum(1 for c in CONVERSATIONS if len(c["turns"]) > 1) >= 25  # mostly multi-turn
    typed = [t["customer"] for c in CONVERSATIONS for t in c["turns"]]
    for words in (
        "Confirm",
        "yes",
        "no",
        "ok I'd like to buy one, ship to 1 Main St, Springfield, IL 62701. I'm bob@example.com",
        "Do you sell wireless mice? What's the cheapest one?",
        "They're too tight",
        "when will it arrive?",
        "quiero cancelar mi pedido ORD-1004",
    ):
        assert words in typed, words
