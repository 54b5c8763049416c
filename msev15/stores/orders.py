"""The order repository: every rule in one transaction, on SQLite or PostgreSQL (stores/sql.py).

On SQLite a write transaction is taken before reading (`BEGIN IMMEDIATE`); on PostgreSQL the rows
a change reads are locked as it reads them (`SELECT ... FOR UPDATE`), so check-then-change
cannot race between instances either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from msev15.stores import database as sqlitedb
from msev15.stores.database import SqliteDatabase
from msev15.stores.demo_data import Product
from msev15.stores.order_rules import (
    CHANGE_RULES,
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
    PG_MIGRATION_LOCK,
    PG_MIGRATIONS,
    PG_SCHEMA_VERSION,
    SCHEMA_VERSION,
    ensure_tenant,
    insert_products,
    now_iso,
    seed_demo_data,
)
from msev15.stores.sql import Database, Sql, fetchval, row_dict

log = logging.getLogger(__name__)

STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled", "return_requested")
BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
ORDER_PREFIX = "ORD-"
FIRST_ORDER_NUMBER = 1001


def money(cents: int) -> str:
    """Prices as the customer reads them; the demo shop sells in US dollars."""
    return f"${cents // 100:,}.{cents % 100:02d}"


class OrderRepository:
    """Orders, customers and products of every tenant; every call is filtered by tenant."""

    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    async def open(cls, path: Path, seed: bool, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> OrderRepository:
        """Connect to a SQLite file, migrate to the current schema, fill a brand-new one with demo data."""
        database = await SqliteDatabase.open(Path(path), busy_timeout_ms)
        try:
            await database.db.execute("PRAGMA foreign_keys = ON")
            return await cls.on(database, seed)
        except BaseException:
            await database.close()
            raise

    @classmethod
    async def on(cls, database: Database, seed: bool) -> OrderRepository:
        """The repository on an open database (SQLite or PostgreSQL), migrated (and seeded when new)."""
        repo = cls(database)
        if database.dialect == "postgresql":
            await repo._migrate_postgres(seed)
        else:
            await repo._migrate_sqlite(seed)
        return repo

    @property
    def dialect(self) -> str:
        return self.database.dialect

    async def close(self) -> None:
        await self.database.close()

    async def check(self) -> str:
        """Readiness: a real query through the shared connection (or pool)."""
        return await self.database.check()

    def transaction(self) -> AbstractAsyncContextManager[Sql]:
        """One write transaction: taken before reading, so check-then-change cannot race."""
        return self.database.transaction()

    def reading(self) -> AbstractAsyncContextManager[Sql]:
        """Reads that never see a write's uncommitted half."""
        return self.database.reading()

    async def _migrate_sqlite(self, seed: bool) -> None:
        async with self.transaction() as db:
            version = int(await fetchval(db, "PRAGMA user_version") or 0)
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.database.describe()} has schema version {version},"
                    f" newer than this code ({SCHEMA_VERSION})"
                )
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
                log.info("orders database %s migrated to version %d", self.database.describe(), number)
            if version == 0 and seed:
                await seed_demo_data(db)
                log.info("orders database %s filled with demo data", self.database.describe())

    async def _migrate_postgres(self, seed: bool) -> None:
        """Under an advisory lock: instances starting at once on an empty database take turns."""
        async with self.transaction() as db:
            await db.execute("SELECT pg_advisory_xact_lock(?)", (PG_MIGRATION_LOCK,))
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = int(await fetchval(db, "SELECT coalesce(max(version), 0) FROM schema_version"))
            if version > PG_SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.database.describe()} has schema version {version},"
                    f" newer than this code ({PG_SCHEMA_VERSION})"
                )
            for number, statements in enumerate(PG_MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                log.info("orders database %s migrated to version %d", self.database.describe(), number)
            if version == 0 and seed:
                await seed_demo_data(db)
                log.info("orders database %s filled with demo data", self.database.describe())

    async def schema_version(self) -> int:
        async with self.reading() as db:
            if db.dialect == "postgresql":
                return int(await fetchval(db, "SELECT max(version) FROM schema_version"))
            return int(await fetchval(db, "PRAGMA user_version"))

    # Set-up helpers (seeding, tests, admin scripts) -------------------------------------

    async def add_tenant(self, tenant_id: str, name: str | None = None, return_address: str = "") -> None:
        async with self.transaction() as db:
            await ensure_tenant(db, tenant_id, name, return_address)

    async def shop(self, tenant_id: str) -> tuple[str, str]:
        """The tenant's shop name and return address (the tenant id and "" when it has no row)."""
        async with self.reading() as db:
            row = await db.fetchone("SELECT name, return_address FROM tenants WHERE id = ?", (tenant_id,))
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
            changed = await db.execute(
                "UPDATE orders SET status = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
                (status, now_iso(), tenant_id, order_id),
            )
            if changed != 1:
                raise OrderError(f"there is no order {order_id}")

    # Queries ------------------------------------------------------------------------------

    async def product(self, tenant_id: str, sku: str) -> dict[str, Any] | None:
        async with self.reading() as db:
            row = await db.fetchone(
                "SELECT sku, name, description, category, price_cents, stock FROM products"
                " WHERE tenant_id = ? AND sku = ?",
                (tenant_id, sku),
            )
        return row_dict(row) if row else None

    async def is_customer(self, tenant_id: str, email: str) -> bool:
        async with self.reading() as db:
            row = await db.fetchone(
                "SELECT 1 FROM customers WHERE tenant_id = ? AND email = ?", (tenant_id, email.lower())
            )
        return row is not None

    async def find_customer_orders(self, tenant_id: str, email: str) -> list[dict[str, Any]]:
        """Newest first, as summaries."""
        async with self.reading() as db:
            rows = await db.fetchall(
                "SELECT o.id, o.status, o.total_cents, o.created_at,"
                " (SELECT coalesce(sum(quantity), 0) FROM order_items i"
                "   WHERE i.tenant_id = o.tenant_id AND i.order_id = o.id) AS item_count"
                " FROM orders o WHERE o.tenant_id = ? AND o.customer_email = ?"
                " ORDER BY o.created_at DESC, o.id DESC",
                (tenant_id, email.lower()),
            )
        return [
            {
                "order_id": r["id"],
                "status": r["status"],
                "total": money(r["total_cents"]),
                "item_count": int(r["item_count"]),
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
                product = await db.fetchone(
                    "SELECT name, stock FROM products WHERE tenant_id = ? AND sku = ?", (tenant_id, sku)
                )
                require_stock(product, sku, quantity)

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
            await ensure_tenant(db, tenant_id)
            if db.dialect == "postgresql":
                # The tenant's row serialises order numbers; the products are locked in one order
                # (by sku, as cancel_order restores them) so two transactions never deadlock.
                await db.execute("SELECT 1 FROM tenants WHERE id = ? FOR UPDATE", (tenant_id,))
                await db.execute(
                    "SELECT 1 FROM products WHERE tenant_id = ? AND sku = ANY(?) ORDER BY sku FOR UPDATE",
                    (tenant_id, sorted(wanted)),
                )
            lines: list[tuple[str, str, int, int]] = []
            for sku, quantity in wanted.items():
                product = require_stock(
                    await db.fetchone(
                        "SELECT name, price_cents, stock FROM products WHERE tenant_id = ? AND sku = ?",
                        (tenant_id, sku),
                    ),
                    sku,
                    quantity,
                )
                changed = await db.execute(
                    "UPDATE products SET stock = stock - ? WHERE tenant_id = ? AND sku = ? AND stock >= ?",
                    (quantity, tenant_id, sku, quantity),
                )
                if changed != 1:  # belt and braces: the lock already rules this out
                    raise OrderError(f"{product['name']} ({sku}) just sold out")
                lines.append((sku, product["name"], quantity, product["price_cents"]))
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
            may_change_address(await _load_order(db, tenant_id, order_id, email, lock=True))
            await db.execute(
                "UPDATE orders SET shipping_address = ?, updated_at = ? WHERE tenant_id = ? AND id = ?"
                " AND status IN ('pending', 'processing')",
                (address, now_iso(), tenant_id, order_id),
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def cancel_order(self, tenant_id: str, order_id: str, email: str, reason: str) -> dict[str, Any]:
        """Cancel and put the items back in stock, in one transaction."""
        async with self.transaction() as db:
            order = await _load_order(db, tenant_id, order_id, email, lock=True)
            may_cancel(order)
            stamp = now_iso()
            changed = await db.execute(
                "UPDATE orders SET status = 'cancelled', cancelled_at = ?, cancel_reason = ?, updated_at = ?"
                " WHERE tenant_id = ? AND id = ? AND status IN ('pending', 'processing')",
                (stamp, reason or None, stamp, tenant_id, order_id),
            )
            if changed != 1:
                raise OrderError(f"order {order_id} could not be cancelled; please try again")
            await db.executemany(
                "UPDATE products SET stock = stock + ? WHERE tenant_id = ? AND sku = ?",
                [(item["quantity"], tenant_id, item["sku"]) for item in sorted(order["items"], key=_sku)],
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def request_return(self, tenant_id: str, order_id: str, email: str, reason: str) -> dict[str, Any]:
        async with self.transaction() as db:
            may_return(await _load_order(db, tenant_id, order_id, email, lock=True))
            stamp = now_iso()
            await db.execute(
                "UPDATE orders SET status = 'return_requested', return_requested_at = ?, return_reason = ?,"
                " updated_at = ? WHERE tenant_id = ? AND id = ? AND status = 'delivered'",
                (stamp, reason or None, stamp, tenant_id, order_id),
            )
            return await _load_order(db, tenant_id, order_id, email)


# Helpers that run inside a caller's transaction or read ---------------------------------


def _sku(item: dict[str, Any]) -> str:
    return str(item["sku"])


async def _load_order(
    db: Sql, tenant_id: str, order_id: str, email: str, *, lock: bool = False
) -> dict[str, Any]:
    """The order as the tools show it; `lock` holds its row (PostgreSQL) until the transaction ends."""
    row = await db.fetchone(
        "SELECT o.*, c.name AS customer_name FROM orders o JOIN customers c"
        " ON c.tenant_id = o.tenant_id AND c.email = o.customer_email"
        " WHERE o.tenant_id = ? AND o.id = ? AND o.customer_email = ?"
        + (" FOR UPDATE OF o" if lock and db.dialect == "postgresql" else ""),
        (tenant_id, order_id, email.lower()),
    )
    if row is None:
        raise not_found(order_id)
    items = await db.fetchall(
        "SELECT sku, name, quantity, unit_price_cents FROM order_items"
        " WHERE tenant_id = ? AND order_id = ? ORDER BY line_no",
        (tenant_id, order_id),
    )
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


async def _next_order_id(db: Sql, tenant_id: str) -> str:
    last = await fetchval(
        db,
        "SELECT max(CAST(substr(id, ?) AS INTEGER)) FROM orders WHERE tenant_id = ? AND id LIKE ?",
        (len(ORDER_PREFIX) + 1, tenant_id, ORDER_PREFIX + "%"),
    )
    if last is None:
        last = FIRST_ORDER_NUMBER - 1
    return f"{ORDER_PREFIX}{max(int(last) + 1, FIRST_ORDER_NUMBER)}"
