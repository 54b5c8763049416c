"""The order repository: one aiosqlite connection, versioned schema, every rule in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from msev15.stores import database as sqlitedb
from msev15.stores.demo_data import Product
from msev15.stores.order_rules import (
    CHANGE_RULES,
    DatabaseBusy,
    OrderError,
    may_cancel,
    may_change_address,
    may_return,
    merge_items,
    not_found,
    require_stock,
)
from msev15.stores.order_schema import (
    INSERT_ITEM,
    MIGRATIONS,
    SCHEMA_VERSION,
    ensure_tenant,
    insert_products,
    now_iso,
    seed_demo_data,
)
from msev15.tracing import span

log = logging.getLogger(__name__)

STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled", "return_requested")
BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
ORDER_PREFIX = "ORD-"
FIRST_ORDER_NUMBER = 1001


_DB_SPAN = {"db.system.name": "sqlite", "db.namespace": "orders"}  # never the statement's values


def money(cents: int) -> str:
    """Prices as the customer reads them; the demo shop sells in US dollars."""
    return f"${cents // 100:,}.{cents % 100:02d}"


class OrderRepository:
    """Orders, customers and products of every tenant; every call is filtered by tenant."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        # One connection: its writes and reads are serialised so nobody sees a half-done change.
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, seed: bool, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> OrderRepository:
        """Connect, migrate to the current schema, and fill a brand-new database with demo data."""
        path = Path(path)
        db = await sqlitedb.connect(path, busy_timeout_ms)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA foreign_keys = ON")
            repo = cls(db, path)
            await repo._migrate(seed)
        except BaseException:
            await db.close()
            raise
        return repo

    async def close(self) -> None:
        async with self.lock:
            await self.db.close()

    async def check(self) -> str:
        """Readiness: a real query through the shared connection."""
        async with self.lock:
            async with self.db.execute("SELECT count(*) FROM tenants") as cursor:
                await cursor.fetchone()
        return "ok"

    # Transactions ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: taken before reading, so check-then-change cannot race."""
        async with self.lock:
            with span("sqlite transaction", _DB_SPAN), _busy_is_refusal():
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                    await self.db.commit()
                except BaseException:
                    if self.db.in_transaction:  # a failed COMMIT must not leave the transaction open
                        await self.db.rollback()
                    raise

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[aiosqlite.Connection]:
        """Reads wait for a running write so they never see its uncommitted half."""
        async with self.lock:
            with span("sqlite read", _DB_SPAN), _busy_is_refusal():
                yield self.db

    async def _migrate(self, seed: bool) -> None:
        async with self.transaction() as db:
            async with db.execute("PRAGMA user_version") as cursor:
                row = await cursor.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}, newer than this code ({SCHEMA_VERSION})"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                log.info("orders database %s migrated to version %d", self.path, number)
            if version == 0 and seed:
                await seed_demo_data(db)
                log.info("orders database %s filled with demo data", self.path)

    # Set-up helpers (seeding, tests, admin scripts) -------------------------------------

    async def add_tenant(self, tenant_id: str, name: str | None = None, return_address: str = "") -> None:
        async with self.transaction() as db:
            await ensure_tenant(db, tenant_id, name, return_address)

    async def shop(self, tenant_id: str) -> tuple[str, str]:
        """The tenant's shop name and return address (the tenant id and "" when it has no row)."""
        async with self.reading() as db:
            async with db.execute(
                "SELECT name, return_address FROM tenants WHERE id = ?", (tenant_id,)
            ) as cursor:
                row = await cursor.fetchone()
        return (str(row["name"]), str(row["return_address"])) if row else (tenant_id, "")

    async def add_products(self, tenant_id: str, products: Iterable[Product]) -> None:
        async with self.transaction() as db:
            await ensure_tenant(db, tenant_id)
            await insert_products(db, tenant_id, products)

    async def set_status(self, tenant_id: str, order_id: str, status: str) -> None:
        """Fulfilment moves orders along (shipped, delivered); not a tool the model can call."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE orders SET status = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
                (status, now_iso(), tenant_id, order_id),
            )
            if cursor.rowcount != 1:
                raise OrderError(f"there is no order {order_id}")

    # Queries ------------------------------------------------------------------------------

    async def product(self, tenant_id: str, sku: str) -> dict[str, Any] | None:
        async with self.reading() as db:
            async with db.execute(
                "SELECT sku, name, description, category, price_cents, stock FROM products"
                " WHERE tenant_id = ? AND sku = ?",
                (tenant_id, sku),
            ) as cursor:
                row = await cursor.fetchone()
        return dict(row) if row else None

    async def is_customer(self, tenant_id: str, email: str) -> bool:
        async with self.reading() as db:
            async with db.execute(
                "SELECT 1 FROM customers WHERE tenant_id = ? AND email = ?", (tenant_id, email.lower())
            ) as cursor:
                return await cursor.fetchone() is not None

    async def find_customer_orders(self, tenant_id: str, email: str) -> list[dict[str, Any]]:
        """Newest first, as summaries."""
        async with self.reading() as db:
            async with db.execute(
                "SELECT o.id, o.status, o.total_cents, o.created_at,"
                " (SELECT coalesce(sum(quantity), 0) FROM order_items i"
                "   WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id) AS item_count"
                " FROM orders o WHERE o.tenant_id = ? AND o.customer_email = ?"
                " ORDER BY o.created_at DESC, o.id DESC",
                (tenant_id, email.lower()),
            ) as cursor:
                rows = await cursor.fetchall()
        return [
            {
                "order_id": r["id"],
                "status": r["status"],
                "total": money(r["total_cents"]),
                "item_count": r["item_count"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    async def get_order(self, tenant_id: str, order_id: str, email: str) -> dict[str, Any]:
        """The whole order, or "not found" when it is not that customer's order in this tenant."""
        async with self.reading() as db:
            return await _load_order(db, tenant_id, order_id, email)

    # Prechecks: the mutations' own rules, read-only, so nobody confirms what would be refused

    async def check_change(self, tenant_id: str, order_id: str, email: str, change: str) -> None:
        """Raise the OrderError that `change` (a tool name of CHANGE_RULES) would meet right now."""
        async with self.reading() as db:
            order = await _load_order(db, tenant_id, order_id, email)
        CHANGE_RULES[change](order)

    async def check_items(self, tenant_id: str, items: Sequence[tuple[str, int]]) -> None:
        """Raise the OrderError that ordering `items` would meet right now (unknown sku, no stock)."""
        wanted = merge_items(items)
        async with self.reading() as db:
            for sku, quantity in wanted.items():
                async with db.execute(
                    "SELECT name, stock FROM products WHERE tenant_id = ? AND sku = ?", (tenant_id, sku)
                ) as cursor:
                    require_stock(await cursor.fetchone(), sku, quantity)

    # Mutations (each one transaction) ---------------------------------------------------

    async def create_order(
        self,
        tenant_id: str,
        email: str,
        name: str,
        items: Sequence[tuple[str, int]],
        shipping_address: str,
    ) -> dict[str, Any]:
        """Check every sku and its stock, take the stock and write the order, all or nothing."""
        email = email.lower()
        wanted = merge_items(items)
        async with self.transaction() as db:
            lines: list[tuple[str, str, int, int]] = []
            for sku, quantity in wanted.items():
                async with db.execute(
                    "SELECT name, price_cents, stock FROM products WHERE tenant_id = ? AND sku = ?",
                    (tenant_id, sku),
                ) as cursor:
                    product = require_stock(await cursor.fetchone(), sku, quantity)
                cursor = await db.execute(
                    "UPDATE products SET stock = stock - ? WHERE tenant_id = ? AND sku = ? AND stock >= ?",
                    (quantity, tenant_id, sku, quantity),
                )
                if cursor.rowcount != 1:  # belt and braces: the lock already rules this out
                    raise OrderError(f"{product['name']} ({sku}) just sold out")
                lines.append((sku, product["name"], quantity, product["price_cents"]))
            await ensure_tenant(db, tenant_id)
            await db.execute(
                "INSERT INTO customers (tenant_id, email, name, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant_id, email) DO NOTHING",
                (tenant_id, email, name, now_iso()),
            )
            order_id = await _next_order_id(db, tenant_id)
            stamp = now_iso()
            total = sum(quantity * price for _, _, quantity, price in lines)
            await db.execute(
                "INSERT INTO orders (tenant_id, id, customer_email, status, shipping_address, total_cents,"
                " created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                (tenant_id, order_id, email, shipping_address, total, stamp, stamp),
            )
            await db.executemany(
                INSERT_ITEM,
                [(tenant_id, order_id, n, *line) for n, line in enumerate(lines, start=1)],
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def update_shipping_address(
        self, tenant_id: str, order_id: str, email: str, address: str
    ) -> dict[str, Any]:
        async with self.transaction() as db:
            may_change_address(await _load_order(db, tenant_id, order_id, email))
            await db.execute(
                "UPDATE orders SET shipping_address = ?, updated_at = ? WHERE tenant_id = ? AND id = ?"
                " AND status IN ('pending', 'processing')",
                (address, now_iso(), tenant_id, order_id),
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def cancel_order(self, tenant_id: str, order_id: str, email: str, reason: str) -> dict[str, Any]:
        """Cancel and put the items back in stock, in one transaction."""
        async with self.transaction() as db:
            order = await _load_order(db, tenant_id, order_id, email)
            may_cancel(order)
            stamp = now_iso()
            cursor = await db.execute(
                "UPDATE orders SET status = 'cancelled', cancelled_at = ?, cancel_reason = ?, updated_at = ?"
                " WHERE tenant_id = ? AND id = ? AND status IN ('pending', 'processing')",
                (stamp, reason or None, stamp, tenant_id, order_id),
            )
            if cursor.rowcount != 1:
                raise OrderError(f"order {order_id} could not be cancelled; please try again")
            await db.executemany(
                "UPDATE products SET stock = stock + ? WHERE tenant_id = ? AND sku = ?",
                [(item["quantity"], tenant_id, item["sku"]) for item in order["items"]],
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def request_return(self, tenant_id: str, order_id: str, email: str, reason: str) -> dict[str, Any]:
        async with self.transaction() as db:
            may_return(await _load_order(db, tenant_id, order_id, email))
            stamp = now_iso()
            await db.execute(
                "UPDATE orders SET status = 'return_requested', return_requested_at = ?, return_reason = ?,"
                " updated_at = ? WHERE tenant_id = ? AND id = ? AND status = 'delivered'",
                (stamp, reason or None, stamp, tenant_id, order_id),
            )
            return await _load_order(db, tenant_id, order_id, email)


# Helpers that run inside a caller's transaction or read ---------------------------------


@contextlib.contextmanager
def _busy_is_refusal() -> Iterator[None]:
    """A lock held elsewhere past the busy timeout is a plain refusal, not a crash of the tool."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            log.warning("order database busy: %s", exc)
            raise DatabaseBusy() from exc
        raise


async def _load_order(db: aiosqlite.Connection, tenant_id: str, order_id: str, email: str) -> dict[str, Any]:
    async with db.execute(
        "SELECT o.*, c.name AS customer_name FROM orders o JOIN customers c"
        " ON c.tenant_id = o.tenant_id AND c.email = o.customer_email"
        " WHERE o.tenant_id = ? AND o.id = ? AND o.customer_email = ?",
        (tenant_id, order_id, email.lower()),
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise not_found(order_id)
    async with db.execute(
        "SELECT sku, name, quantity, unit_price_cents FROM order_items"
        " WHERE tenant_id = ? AND order_id = ? ORDER BY line_no",
        (tenant_id, order_id),
    ) as cursor:
        items = await cursor.fetchall()
    order: dict[str, Any] = {
        "order_id": row["id"],
        "status": row["status"],
        "customer_email": row["customer_email"],
        "customer_name": row["customer_name"],
        "shipping_address": row["shipping_address"],
        "items": [
            {
                "sku": i["sku"],
                "name": i["name"],
                "quantity": i["quantity"],
                "unit_price": money(i["unit_price_cents"]),
                "line_total": money(i["unit_price_cents"] * i["quantity"]),
            }
            for i in items
        ],
        "total": money(row["total_cents"]),
        "total_cents": row["total_cents"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if row["cancel_reason"] is not None or row["status"] == "cancelled":
        order["cancel_reason"] = row["cancel_reason"]
    if row["return_reason"] is not None or row["status"] == "return_requested":
        order["return_reason"] = row["return_reason"]
    return order


async def _next_order_id(db: aiosqlite.Connection, tenant_id: str) -> str:
    async with db.execute(
        "SELECT max(CAST(substr(id, ?) AS INTEGER)) FROM orders WHERE tenant_id = ? AND id LIKE ?",
        (len(ORDER_PREFIX) + 1, tenant_id, ORDER_PREFIX + "%"),
    ) as cursor:
        row = await cursor.fetchone()
    last = row[0] if row and row[0] is not None else FIRST_ORDER_NUMBER - 1
    return f"{ORDER_PREFIX}{max(int(last) + 1, FIRST_ORDER_NUMBER)}"
