"""Hypothesis: random operation sequences on the session stores and the order rules, checked by a model."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msev15.stores.demo_data import CATALOG
from msev15.stores.orders import OrderRepository
from msev15.stores.sessions import MemorySessionStore, Message, SessionLimitError
from msev15.stores.sessions.sqlite import SqliteSessionStore
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolContext, ToolRegistry

FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Session stores --------------------------------------------------------------------------------

# "A" + "b:c" and "A:b" + "c" collide under a naive "tenant:session" key.
TENANTS = ["A", "A:b", "B"]
SESSION_IDS = ["b", "c", "b:c", ":", "x"]
MAX_SESSIONS, MAX_PER_TENANT, MAX_MESSAGES = 5, 3, 4

session_ops = st.lists(
    st.one_of(
        st.tuples(st.just("save"), st.sampled_from(TENANTS), st.sampled_from(SESSION_IDS), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from(TENANTS), st.sampled_from(SESSION_IDS), st.just(0)),
    ),
    max_size=30,
)


class SessionModel:
    """The rules in plain Python: LRU over all sessions, a per-tenant cap, the newest messages kept."""

    def __init__(self) -> None:
        self.sessions: OrderedDict[tuple[str, str], list[str]] = OrderedDict()

    def save(self, key: tuple[str, str], contents: list[str]) -> bool:
        if key not in self.sessions:
            if sum(1 for k in self.sessions if k[0] == key[0]) >= MAX_PER_TENANT:
                return False
            self.sessions[key] = []
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        kept = self.sessions[key]
        kept.extend(contents)
        del kept[: max(0, len(kept) - MAX_MESSAGES)]
        self.sessions.move_to_end(key)
        return True

    def listed(self, tenant: str) -> list[str]:
        return [s for (t, s) in reversed(self.sessions) if t == tenant]


class Tick:
    """A clock that moves one second per reading, so ordering never depends on timer resolution."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


_files = itertools.count()


async def _session_store(kind: str, folder: Path) -> Any:
    limits = {"ttl_seconds": 10**9, "max_sessions": MAX_SESSIONS, "max_per_tenant": MAX_PER_TENANT}
    if kind == "memory":
        return MemorySessionStore(**limits, max_messages=MAX_MESSAGES, clock=Tick())
    path = folder / f"sessions-{next(_files)}.db"
    return await SqliteSessionStore.open(path, **limits, max_messages=MAX_MESSAGES, clock=Tick())


async def _check_sessions(kind: str, folder: Path, ops: list[tuple[str, str, str, int]]) -> None:
    store = await _session_store(kind, folder)
    model = SessionModel()
    try:
        for step, (op, tenant, session_id, count) in enumerate(ops):
            key = (tenant, session_id)
            if op == "save":
                contents = [f"{step}.{i}" for i in range(count)]
                messages = [
                    Message("user" if i % 2 == 0 else "assistant", c, 0.0) for i, c in enumerate(contents)
                ]
                expected = model.save(key, contents)
                try:
                    saved = await store.save_turn(tenant, session_id, messages)
                except SessionLimitError:
                    assert not expected, f"step {step}: refused a save the model allows"
                else:
                    assert expected, f"step {step}: allowed a save over the tenant limit"
                    assert [m.content for m in saved.messages] == model.sessions[key]
            else:
                assert await store.delete(tenant, session_id) == (model.sessions.pop(key, None) is not None)
            for t in TENANTS:
                listed = await store.list(t)
                assert [s.session_id for s in listed] == model.listed(t), f"step {step}: list({t!r})"
                assert all(s.tenant_id == t for s in listed)
                for s in SESSION_IDS:
                    found = await store.get(t, s)
                    want = model.sessions.get((t, s))
                    assert (found is None) == (want is None), f"step {step}: get({t!r}, {s!r})"
                    if found is not None:
                        assert [m.content for m in found.messages] == want
                        assert (found.tenant_id, found.session_id) == (t, s)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@FAST
@given(ops=session_ops)
def test_session_store_matches_the_model(
    kind: str, folder: Path, ops: list[tuple[str, str, str, int]]
) -> None:
    asyncio.run(_check_sessions(kind, folder, ops))


# Order rules -----------------------------------------------------------------------------------

ALICE, BOB = "alice@example.com", "bob@example.com"
OTHER = "acme"
ORDER_IDS = [f"ORD-{n}" for n in range(1001, 1008)]
SOLD_OUT = next(p.sku for p in CATALOG if p.stock == 0)
SKUS = ["HDP-NC100", "SPK-PT300", "CBL-USBC2M", SOLD_OUT, "NOPE-404"]
CHANGEABLE = ("pending", "processing")
NEXT_STATUS = {"pending": "processing", "processing": "shipped", "shipped": "delivered"}


@pytest.fixture(scope="module")
def order_template(folder: Path) -> Path:
    """Seeded once: the demo tenant, and a second one with the same order ids and emails but little stock."""
    path = folder / "orders-template.db"

    async def build() -> None:
        repo = await OrderRepository.open(path, seed=True)
        try:
            await repo.add_products(OTHER, [dataclasses.replace(p, stock=min(p.stock, 3)) for p in CATALOG])
            address = "1 Elm Road, Springfield, IL 62701, USA"
            for email, name, sku, status in [
                (ALICE, "Alice Martin", "HDP-NC100", "pending"),
                (ALICE, "Alice Martin", "SPK-PT300", "shipped"),
                (ALICE, "Alice Martin", "CBL-USBC2M", "delivered"),
                (BOB, "Bob Smith", "HDP-NC100", "processing"),
            ]:
                order = await repo.create_order(OTHER, email, name, [(sku, 1)], address)
                if status != "pending":
                    await repo.set_status(OTHER, order["order_id"], status)
        finally:
            await repo.close()

    asyncio.run(build())
    return path


tenants = st.sampled_from(["default", OTHER])
emails = st.sampled_from([ALICE, BOB])
order_ops = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["cancel_order", "request_return", "advance"]),
            tenants,
            st.sampled_from(ORDER_IDS),
            emails,
        ),
        st.tuples(st.just("update_shipping_address"), tenants, st.sampled_from(ORDER_IDS), emails),
        st.tuples(
            st.just("create_order"),
            tenants,
            st.lists(st.tuples(st.sampled_from(SKUS), st.integers(1, 4)), min_size=1, max_size=3),
            emails,
        ),
    ),
    max_size=20,
)


async def _snapshot(repo: OrderRepository) -> dict[str, Any]:
    """Every order, line and stock level of every tenant, straight from the tables."""
    async with repo.reading() as db:
        rows = await db.fetchall("SELECT tenant_id, id, customer_email, status, shipping_address FROM orders")
        orders = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
        items: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for r in await db.fetchall(
            "SELECT tenant_id, order_id, sku, quantity FROM order_items ORDER BY line_no"
        ):
            items.setdefault((r[0], r[1]), []).append((r[2], r[3]))
        stock = {(r[0], r[1]): r[2] for r in await db.fetchall("SELECT tenant_id, sku, stock FROM products")}
    return {"orders": orders, "items": items, "stock": stock}


def _predict(state: dict[str, Any], op: tuple[Any, ...], step: int) -> bool:
    """Apply API.md's rules to the model state; returns whether the call should succeed."""
    name, tenant, target, email = op
    orders, items, stock = state["orders"], state["items"], state["stock"]
    if name == "create_order":
        wanted: dict[str, int] = {}
        for sku, quantity in target:
            wanted[sku] = wanted.get(sku, 0) + quantity
        if any(stock.get((tenant, sku), 0) < quantity for sku, quantity in wanted.items()):
            return False  # unknown sku or not enough stock: nothing changes
        for sku, quantity in wanted.items():
            stock[(tenant, sku)] -= quantity
        numbers = [int(i.removeprefix("ORD-")) for (t, i) in orders if t == tenant]
        order_id = f"ORD-{max(numbers, default=1000) + 1}"
        orders[(tenant, order_id)] = (email, "pending", f"{step} Order Street, Town")
        items[(tenant, order_id)] = list(wanted.items())
        return True
    key = (tenant, target)
    if key not in orders:
        return False
    owner, status, address = orders[key]
    if name == "advance":  # fulfilment, not a tool: the owner does not matter
        if status in NEXT_STATUS:
            orders[key] = (owner, NEXT_STATUS[status], address)
        return True
    if owner != email:
        return False
    if name == "cancel_order" and status in CHANGEABLE:
        orders[key] = (owner, "cancelled", address)
        for sku, quantity in items[key]:
            stock[(tenant, sku)] += quantity
        return True
    if name == "update_shipping_address" and status in CHANGEABLE:
        orders[key] = (owner, status, f"{step} New Street, Town")
        return True
    if name == "request_return" and status == "delivered":
        orders[key] = (owner, "return_requested", address)
        return True
    return False


async def _check_orders(template: Path, folder: Path, ops: list[tuple[Any, ...]]) -> None:
    path = folder / f"orders-{next(_files)}.db"
    shutil.copyfile(template, path)
    repo = await OrderRepository.open(path, seed=False)
    tools = ToolRegistry(default_timeout=10.0)
    tools.register_all(order_tools(repo))
    try:
        state = await _snapshot(repo)
        for step, op in enumerate(ops):
            name, tenant, target, email = op
            expected = _predict(state, op, step)
            if name == "advance":
                status = (await _snapshot(repo))["orders"].get((tenant, target), (None, None))[1]
                if status in NEXT_STATUS:
                    await repo.set_status(tenant, target, NEXT_STATUS[status])
                assert await _snapshot(repo) == state, f"step {step}: {op}"
                continue
            if name == "create_order":
                args: dict[str, Any] = {
                    "customer_email": email,
                    "customer_name": "Property Tester",
                    "items": [{"sku": s, "quantity": q} for s, q in target],
                    "shipping_address": f"{step} Order Street, Town",
                }
            else:
                args = {"order_id": target, "customer_email": email}
                if name == "update_shipping_address":
                    args["shipping_address"] = f"{step} New Street, Town"
            # The tenant comes from the context only, as in the agent.
            result = await tools.call(name, args, ToolContext(tenant, "s", f"r{step}"))
            assert result.ok == expected, f"step {step}: {op} gave {result.error or 'ok'}"
            actual = await _snapshot(repo)
            assert actual == state, f"step {step}: {op} changed more (or less) than the rules allow"
            assert all(level >= 0 for level in actual["stock"].values())
    finally:
        await repo.close()


@FAST
@given(ops=order_ops)
def test_order_rules_match_the_status_machine(
    order_template: Path, folder: Path, ops: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_check_orders(order_template, folder, ops))
