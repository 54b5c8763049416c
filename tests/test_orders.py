"""The order repository and the six order tools: every rule of API.md's table, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.stores.demo_data import Product
from msev15.stores.order_schema import PG_SCHEMA_VERSION
from msev15.stores.orders import SCHEMA_VERSION, OrderError, OrderRepository
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolContext, ToolRegistry, ToolResult
from tests.conftest import MakeModelSettings, make_settings
from tests.engines import Engine
from tests.openai_server import Reply, ScriptedOpenAI

ALICE = "alice@example.com"
BOB = "bob@example.com"
ACME = "acme"


@pytest.fixture
async def repo(engine: Engine) -> AsyncIterator[OrderRepository]:
    opened = await engine.open(seed=True)
    yield opened
    await opened.close()


@pytest.fixture
def registry(repo: OrderRepository) -> ToolRegistry:
    tools = ToolRegistry(default_timeout=5.0)
    tools.register_all(order_tools(repo))
    return tools


async def call(tools: ToolRegistry, name: str, args: dict[str, Any], tenant: str = "default") -> ToolResult:
    return await tools.call(name, args, ToolContext(tenant, "s1", "r1"))


def data(result: ToolResult) -> Any:
    assert result.ok, result.error
    assert result.content is not None
    return orjson.loads(result.content)


async def stock(repo: OrderRepository, sku: str, tenant: str = "default") -> int:
    product = await repo.product(tenant, sku)
    assert product is not None
    return int(product["stock"])


async def status(repo: OrderRepository, order_id: str, email: str = ALICE, tenant: str = "default") -> str:
    return str((await repo.get_order(tenant, order_id, email))["status"])


async def scalar(repo: OrderRepository, sql: str, *params: Any) -> Any:
    async with repo.reading() as db:
        row = await db.fetchone(sql, params)
    assert row is not None
    return row[0]


async def rows(repo: OrderRepository, sql: str, *params: Any) -> list[Any]:
    async with repo.reading() as db:
        return await db.fetchall(sql, params)


async def add_acme(repo: OrderRepository) -> None:
    """A second tenant whose catalog shares nothing with the demo shop."""
    await repo.add_products(ACME, [Product("ACME-1", "Anvil", "Heavy.", "tools", 5000, 10)])


# Schema and demo data ----------------------------------------------------------------------


async def test_schema_is_migrated_with_wal_foreign_keys_and_the_shared_product_columns(
    repo: OrderRepository, engine: Engine
) -> None:
    if engine.postgres:
        assert await repo.schema_version() == PG_SCHEMA_VERSION
        columns = [
            row[0]
            for row in await rows(
                repo,
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'products'"
                " ORDER BY ordinal_position",
            )
        ]
        indexes = {row[0] for row in await rows(repo, "SELECT indexname FROM pg_indexes")}
        assert "audit_tenant_session_id" in indexes  # the audit log comes with the same migrations
    else:
        assert await repo.schema_version() == SCHEMA_VERSION
        assert await scalar(repo, "PRAGMA journal_mode") == "wal"
        assert await scalar(repo, "PRAGMA foreign_keys") == 1
        assert 0 < await scalar(repo, "PRAGMA busy_timeout") <= 10_000
        columns = [row["name"] for row in await rows(repo, "PRAGMA table_info(products)")]
        indexes = {row[0] for row in await rows(repo, "SELECT name FROM sqlite_master WHERE type='index'")}
    # The bundled MCP server reads the catalog with exactly these names.
    assert columns == ["tenant_id", "sku", "name", "description", "category", "price_cents", "stock"]
    assert {"orders_by_customer", "order_items_by_sku", "outbox_due"} <= indexes


async def test_demo_data_is_as_api_md_says(registry: ToolRegistry, repo: OrderRepository) -> None:
    alice = data(await call(registry, "find_customer_orders", {"customer_email": ALICE}))
    assert {o["order_id"]: o["status"] for o in alice["orders"]} == {
        "ORD-1001": "pending",
        "ORD-1002": "shipped",
        "ORD-1003": "delivered",
    }
    assert alice["count"] == 3
    assert [o["order_id"] for o in alice["orders"]] == ["ORD-1001", "ORD-1002", "ORD-1003"]  # newest first
    order = data(await call(registry, "get_order", {"order_id": "ORD-1001", "customer_email": ALICE}))
    assert order["customer_name"] == "Alice Martin"
    assert await status(repo, "ORD-1004", BOB) == "processing"
    assert await scalar(repo, "SELECT count(*) FROM products WHERE tenant_id = 'default'") >= 20
    noise_cancelling = "SELECT count(*) FROM products WHERE lower(name) LIKE '%noise cancelling%'"
    assert await scalar(repo, noise_cancelling) == 1
    assert await scalar(repo, "SELECT min(price_cents) FROM products") > 0


async def test_seeding_is_idempotent_and_never_resets_changed_data(engine: Engine) -> None:
    first = await engine.open(seed=True)
    counts = [await scalar(first, f"SELECT count(*) FROM {t}") for t in ("products", "orders", "customers")]
    await first.cancel_order("default", "ORD-1001", ALICE, "")
    await first.close()
    again = await engine.open(seed=True)
    try:
        assert [
            await scalar(again, f"SELECT count(*) FROM {t}") for t in ("products", "orders", "customers")
        ] == (counts)
        assert await status(again, "ORD-1001") == "cancelled"
    finally:
        await again.close()


async def test_without_seed_a_new_database_is_empty(engine: Engine) -> None:
    engine.tmp_path = engine.tmp_path / "sub"  # SQLite: the folder is made too
    empty = await engine.open(seed=False)
    try:
        for table in ("tenants", "customers", "products", "orders", "order_items"):
            assert await scalar(empty, f"SELECT count(*) FROM {table}") == 0
        assert await empty.check() == "ok"
    finally:
        await empty.close()


async def test_a_database_from_newer_code_is_refused(engine: Engine) -> None:
    repo = await engine.open(seed=False)
    async with repo.transaction() as db:
        if engine.postgres:
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (PG_SCHEMA_VERSION + 1,))
        else:
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    await repo.close()
    with pytest.raises(RuntimeError, match="newer"):
        await engine.open(seed=False)


# Tool surface ---------------------------------------------------------------------------------


def test_tools_have_the_exact_names_arguments_and_consequence_flags(repo: OrderRepository) -> None:
    tools = {t.name: t for t in order_tools(repo)}
    params = {name: set(t.spec()["function"]["parameters"]["properties"]) for name, t in tools.items()}
    assert params == {
        "find_customer_orders": {"customer_email"},
        "get_order": {"order_id", "customer_email"},
        "create_order": {"customer_email", "customer_name", "items", "shipping_address"},
        "update_shipping_address": {"order_id", "customer_email", "shipping_address"},
        "cancel_order": {"order_id", "customer_email", "reason"},
        "request_return": {"order_id", "customer_email", "reason"},
    }
    assert {n for n, t in tools.items() if t.consequential} == {
        "create_order",
        "update_shipping_address",
        "cancel_order",
        "request_return",
    }


async def test_arguments_are_validated_and_the_tenant_cannot_be_passed(registry: ToolRegistry) -> None:
    bad_email = await call(registry, "find_customer_orders", {"customer_email": "alice"})
    assert not bad_email.ok and "email" in (bad_email.error or "")
    sneaky = await call(
        registry, "get_order", {"order_id": "ORD-1004", "customer_email": BOB, "tenant_id": ACME}
    )
    assert not sneaky.ok and "tenant_id" in (sneaky.error or "")


async def test_order_ids_and_emails_are_normalised(registry: ToolRegistry) -> None:
    order = data(
        await call(registry, "get_order", {"order_id": "#ord-1002", "customer_email": " Alice@Example.COM "})
    )
    assert order["order_id"] == "ORD-1002"
    assert data(await call(registry, "get_order", {"order_id": "1003", "customer_email": ALICE}))[
        "status"
    ] == ("delivered")


# find_customer_orders / get_order: ownership within the tenant ---------------------------------


async def test_get_order_is_not_found_for_another_email_or_an_unknown_id(registry: ToolRegistry) -> None:
    for args in (
        {"order_id": "ORD-1004", "customer_email": ALICE},  # bob's order
        {"order_id": "ORD-9", "customer_email": ALICE},
        {"order_id": "ORD-1001", "customer_email": "mallory@example.com"},
    ):
        result = await call(registry, "get_order", args)
        assert not result.ok
        assert result.error == f"I could not find order {args['order_id']} for that email"


async def test_find_customer_orders_of_a_stranger_is_empty(registry: ToolRegistry) -> None:
    assert (
        data(await call(registry, "find_customer_orders", {"customer_email": "nobody@example.com"}))["count"]
        == 0
    )


async def test_other_tenants_see_nothing_and_change_nothing(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    await add_acme(repo)
    assert data(await call(registry, "find_customer_orders", {"customer_email": ALICE}, ACME))["count"] == 0
    for name, extra in (
        ("get_order", {}),
        ("cancel_order", {"reason": "x"}),
        ("update_shipping_address", {"shipping_address": "1 Elsewhere Road, Nowhere"}),
    ):
        result = await call(registry, name, {"order_id": "ORD-1004", "customer_email": BOB, **extra}, ACME)
        assert not result.ok and result.error == "I could not find order ORD-1004 for that email"
    refused = await call(registry, "request_return", {"order_id": "ORD-1003", "customer_email": ALICE}, ACME)
    assert not refused.ok
    assert await status(repo, "ORD-1004", BOB) == "processing"
    assert await status(repo, "ORD-1003") == "delivered"
    # The demo shop's skus are not acme's.
    foreign = await call(registry, "create_order", _new_order("HDP-NC100", 1), ACME)
    assert not foreign.ok and "no product with SKU HDP-NC100" in (foreign.error or "")


async def test_the_same_order_id_in_two_tenants_are_two_orders(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    await add_acme(repo)
    # acme's first order gets acme's first id, which is also a demo-shop id.
    for _ in range(4):
        data(await call(registry, "create_order", _new_order("ACME-1", 1, email=ALICE), ACME))
    acme_1001 = data(
        await call(registry, "cancel_order", {"order_id": "ORD-1001", "customer_email": ALICE}, ACME)
    )
    assert acme_1001["status"] == "cancelled" and acme_1001["items"][0]["sku"] == "ACME-1"
    assert await status(repo, "ORD-1001") == "pending"  # the demo shop's ORD-1001 is untouched
    assert await stock(repo, "HDP-NC100") == 25


# create_order ---------------------------------------------------------------------------------


def _new_order(sku: str, quantity: int, email: str = "carol@example.com") -> dict[str, Any]:
    return {
        "customer_email": email,
        "customer_name": "Carol Jones",
        "items": [{"sku": sku, "quantity": quantity}],
        "shipping_address": "7 Elm Street, Springfield, IL 62702, USA",
    }


async def test_create_order_takes_stock_and_starts_pending(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    args = _new_order("hdp-nc100", 2)
    args["items"].append({"sku": "CBL-USBC2M", "quantity": 3})
    order = data(await call(registry, "create_order", args))
    assert order["order_id"] == "ORD-1005"
    assert order["status"] == "pending"
    assert order["total_cents"] == 2 * 19999 + 3 * 1299
    assert [(i["sku"], i["quantity"]) for i in order["items"]] == [("HDP-NC100", 2), ("CBL-USBC2M", 3)]
    assert await stock(repo, "HDP-NC100") == 23
    assert await stock(repo, "CBL-USBC2M") == 197
    assert await repo.is_customer("default", "carol@example.com")
    assert not await repo.is_customer(ACME, "carol@example.com")


async def test_create_order_refuses_unknown_skus(registry: ToolRegistry, repo: OrderRepository) -> None:
    result = await call(registry, "create_order", _new_order("NOPE-1", 1))
    assert not result.ok and result.error == "there is no product with SKU NOPE-1"
    assert await scalar(repo, "SELECT count(*) FROM orders") == 4


@pytest.mark.parametrize("quantity", [0, -1, 101])
async def test_create_order_quantity_must_be_1_to_100(
    registry: ToolRegistry, repo: OrderRepository, quantity: int
) -> None:
    # CBL-USBC2M has 200 in stock, so only the quantity rule can refuse 101.
    result = await call(registry, "create_order", _new_order("CBL-USBC2M", quantity))
    assert not result.ok and "quantity" in (result.error or "")
    assert await stock(repo, "CBL-USBC2M") == 200


async def test_repository_enforces_quantities_itself(repo: OrderRepository) -> None:
    for items in ([("CBL-USBC2M", 101)], [("CBL-USBC2M", 0)], [("CBL-USBC2M", 60), ("cbl-usbc2m", 41)], []):
        with pytest.raises(OrderError):
            await repo.create_order("default", "carol@example.com", "Carol", items, "7 Elm Street")
    assert await stock(repo, "CBL-USBC2M") == 200


async def test_create_order_is_all_or_nothing_when_stock_is_short(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    args = _new_order("HDP-NC100", 1)
    args["items"].append({"sku": "HDP-KID20", "quantity": 4})  # only 3 in stock
    result = await call(registry, "create_order", args)
    assert not result.ok and "only 3" in (result.error or "")
    out = await call(registry, "create_order", _new_order("CTL-GAME", 1))
    assert not out.ok and "out of stock" in (out.error or "")
    assert await stock(repo, "HDP-NC100") == 25  # the first line's stock was given back
    assert await scalar(repo, "SELECT count(*) FROM orders") == 4


async def test_two_orders_racing_for_the_last_unit_exactly_one_wins(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    await repo.add_products("default", [Product("LAST-1", "Last One", "", "misc", 1000, 1)])
    results = await asyncio.gather(
        *(call(registry, "create_order", _new_order("LAST-1", 1, f"buyer{i}@example.com")) for i in range(2))
    )
    assert sorted(r.ok for r in results) == [False, True]
    loser = next(r for r in results if not r.ok)
    assert "out of stock" in (loser.error or "")
    assert await stock(repo, "LAST-1") == 0
    assert await scalar(repo, "SELECT count(*) FROM order_items WHERE sku = 'LAST-1'") == 1


# update_shipping_address ------------------------------------------------------------------------

NEW_ADDRESS = "99 New Road, Portland, OR 97201, USA"


@pytest.mark.parametrize(("order_id", "email"), [("ORD-1001", ALICE), ("ORD-1004", BOB)])
async def test_address_changes_while_pending_or_processing(
    registry: ToolRegistry, repo: OrderRepository, order_id: str, email: str
) -> None:
    args = {"order_id": order_id, "customer_email": email, "shipping_address": NEW_ADDRESS}
    assert data(await call(registry, "update_shipping_address", args))["shipping_address"] == NEW_ADDRESS
    assert (await repo.get_order("default", order_id, email))["shipping_address"] == NEW_ADDRESS


@pytest.mark.parametrize(("order_id", "state"), [("ORD-1002", "shipped"), ("ORD-1003", "delivered")])
async def test_address_cannot_change_after_shipping(
    registry: ToolRegistry, repo: OrderRepository, order_id: str, state: str
) -> None:
    args = {"order_id": order_id, "customer_email": ALICE, "shipping_address": NEW_ADDRESS}
    result = await call(registry, "update_shipping_address", args)
    assert not result.ok and f"is {state}" in (result.error or "")
    assert (await repo.get_order("default", order_id, ALICE))["shipping_address"] != NEW_ADDRESS


async def test_address_cannot_change_on_a_cancelled_order_or_for_another_email(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    await repo.cancel_order("default", "ORD-1001", ALICE, "")
    args = {"order_id": "ORD-1001", "customer_email": ALICE, "shipping_address": NEW_ADDRESS}
    assert not (await call(registry, "update_shipping_address", args)).ok
    stolen = await call(registry, "update_shipping_address", {**args, "order_id": "ORD-1004"})
    assert not stolen.ok and "could not find" in (stolen.error or "")
    assert (await repo.get_order("default", "ORD-1004", BOB))["shipping_address"] != NEW_ADDRESS


# cancel_order ------------------------------------------------------------------------------------


async def test_cancel_restores_stock(registry: ToolRegistry, repo: OrderRepository) -> None:
    order = data(
        await call(
            registry, "cancel_order", {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "mistake"}
        )
    )
    assert order["status"] == "cancelled" and order["cancel_reason"] == "mistake"
    assert await stock(repo, "HDP-NC100") == 26
    assert await stock(repo, "CBL-USBC2M") == 202


async def test_cancel_works_while_processing(registry: ToolRegistry, repo: OrderRepository) -> None:
    assert data(await call(registry, "cancel_order", {"order_id": "ORD-1004", "customer_email": BOB}))[
        "status"
    ] == ("cancelled")
    assert await stock(repo, "MON-27Q") == 9


@pytest.mark.parametrize(("order_id", "state"), [("ORD-1002", "shipped"), ("ORD-1003", "delivered")])
async def test_cancel_is_refused_once_shipped(
    registry: ToolRegistry, repo: OrderRepository, order_id: str, state: str
) -> None:
    result = await call(registry, "cancel_order", {"order_id": order_id, "customer_email": ALICE})
    assert not result.ok and f"is {state}" in (result.error or "")
    assert await status(repo, order_id) == state


async def test_cancel_twice_is_refused_and_stock_restored_once(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    args = {"order_id": "ORD-1001", "customer_email": ALICE}
    assert (await call(registry, "cancel_order", args)).ok
    again = await call(registry, "cancel_order", args)
    assert not again.ok and again.error == "order ORD-1001 is already cancelled"
    assert await stock(repo, "HDP-NC100") == 26


async def test_two_concurrent_cancels_one_succeeds(registry: ToolRegistry, repo: OrderRepository) -> None:
    args = {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "race"}
    results = await asyncio.gather(*(call(registry, "cancel_order", args) for _ in range(2)))
    assert sorted(r.ok for r in results) == [False, True]
    assert next(r for r in results if not r.ok).error == "order ORD-1001 is already cancelled"
    assert await stock(repo, "HDP-NC100") == 26
    assert await stock(repo, "CBL-USBC2M") == 202


async def test_cancel_of_another_customers_order_is_not_found(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    result = await call(registry, "cancel_order", {"order_id": "ORD-1004", "customer_email": ALICE})
    assert not result.ok and result.error == "I could not find order ORD-1004 for that email"
    assert await status(repo, "ORD-1004", BOB) == "processing"


# request_return -------------------------------------------------------------------------------------


async def test_return_when_delivered(registry: ToolRegistry, repo: OrderRepository) -> None:
    args = {"order_id": "ORD-1003", "customer_email": ALICE, "reason": "too small"}
    order = data(await call(registry, "request_return", args))
    assert order["status"] == "return_requested" and order["return_reason"] == "too small"
    again = await call(registry, "request_return", args)
    assert not again.ok and "already been requested" in (again.error or "")


@pytest.mark.parametrize(
    ("order_id", "email", "state"),
    [("ORD-1001", ALICE, "pending"), ("ORD-1002", ALICE, "shipped"), ("ORD-1004", BOB, "processing")],
)
async def test_return_is_refused_before_delivery(
    registry: ToolRegistry, repo: OrderRepository, order_id: str, email: str, state: str
) -> None:
    result = await call(registry, "request_return", {"order_id": order_id, "customer_email": email})
    assert not result.ok and "delivered" in (result.error or "")
    assert await status(repo, order_id, email) == state


async def test_return_of_another_customers_order_is_not_found(
    registry: ToolRegistry, repo: OrderRepository
) -> None:
    result = await call(registry, "request_return", {"order_id": "ORD-1003", "customer_email": BOB})
    assert not result.ok and "could not find" in (result.error or "")
    assert await status(repo, "ORD-1003") == "delivered"


async def test_a_cancelled_order_cannot_be_returned(registry: ToolRegistry, repo: OrderRepository) -> None:
    await repo.set_status("default", "ORD-1001", "delivered")
    await repo.set_status("default", "ORD-1001", "cancelled")
    result = await call(registry, "request_return", {"order_id": "ORD-1001", "customer_email": ALICE})
    assert not result.ok and "is cancelled" in (result.error or "")


# Through the HTTP API with a real model client -------------------------------------------------


async def test_a_model_tool_call_over_http_cancels_the_order(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, engine: Engine
) -> None:
    settings = make_model_settings(require_confirmation=False, **await engine.settings_overrides())
    openai_server.push(
        Reply.call(
            "cancel_order", {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "changed my mind"}
        ),
        Reply.say("done"),
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client: TestClientProtocol = test_app.test_client()
        response = await client.post(
            "/api/v1/chat", json={"session_id": "s1", "message": "Cancel ORD-1001, I'm alice@example.com"}
        )
        body = await response.get_json()
        assert response.status_code == 200, body
        assert body["message"] == "done"
        assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [("cancel_order", True)]
        repo = app.extensions["msev15"].orders
        assert await status(repo, "ORD-1001") == "cancelled"
        assert await stock(repo, "HDP-NC100") == 26
    # The model read the tool's result on its second request.
    tool_message = openai_server.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and '"cancelled"' in tool_message["content"]


async def test_readiness_reports_the_database_and_outbox_mode(engine: Engine, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, **await engine.settings_overrides()))
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/health/readiness")
    body = await response.get_json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["smtp"] == "outbox only"
    assert not any(w.startswith(("database", "smtp")) for w in body["warnings"])
