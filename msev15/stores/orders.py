"""The order repository: one aiosqlite connection, versioned schema, every rule in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from msev15.stores import database as sqlitedb
from msev15.stores import demo_data
from msev15.stores.demo_data import Product
from msev15.tools.registry import ToolError

log = logging.getLogger(__name__)

STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled", "return_requested")
CHANGEABLE = ("pending", "processing")
MAX_QUANTITY = 100
BUSY_TIMEOUT_MS = sqlitedb.BUSY_TIMEOUT_MS
ORDER_PREFIX = "ORD-"
FIRST_ORDER_NUMBER = 1001

# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE customers (
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            email TEXT NOT NULL,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (tenant_id, email)
        )""",
        """CREATE TABLE products (
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            sku TEXT NOT NULL,
            name TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            category TEXT NOT NULL DEFAULT '',
            price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
            stock INTEGER NOT NULL CHECK (stock >= 0),
            PRIMARY KEY (tenant_id, sku)
        )""",
        "CREATE INDEX products_by_category ON products (tenant_id, category)",
        """CREATE TABLE orders (
            tenant_id TEXT NOT NULL,
            id TEXT NOT NULL,
            customer_email TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('pending', 'processing', 'shipped', 'delivered', 'cancelled', 'return_requested')),
            shipping_address TEXT NOT NULL,
            total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            cancelled_at TEXT,
            cancel_reason TEXT,
            return_requested_at TEXT,
            return_reason TEXT,
            PRIMARY KEY (tenant_id, id),
            FOREIGN KEY (tenant_id, customer_email) REFERENCES customers (tenant_id, email)
        )""",
        "CREATE INDEX orders_by_customer ON orders (tenant_id, customer_email, created_at)",
        """CREATE TABLE order_items (
            tenant_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            name TEXT NOT NULL,
            quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 100),
            unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
            PRIMARY KEY (tenant_id, order_id, line_no),
            FOREIGN KEY (tenant_id, order_id) REFERENCES orders (tenant_id, id) ON DELETE CASCADE,
            FOREIGN KEY (tenant_id, sku) REFERENCES products (tenant_id, sku)
        )""",
        "CREATE INDEX order_items_by_sku ON order_items (tenant_id, sku)",
    ),
    (
        """CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            recipient TEXT NOT NULL,
            subject TEXT NOT NULL,
            raw BLOB NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'undelivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            created_at TEXT NOT NULL,
            delivered_at TEXT
        )""",
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT_ITEM = (
    "INSERT INTO order_items (tenant_id, order_id, line_no, sku, name, quantity, unit_price_cents)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class OrderError(ToolError):
    """A refusal the model repeats to the customer (not found, wrong status, no stock)."""


class DatabaseBusy(OrderError):
    """Another connection kept the database locked past the busy timeout; the caller may retry."""

    def __init__(self) -> None:
        super().__init__("the order database is busy, please try again")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
            with _busy_is_refusal():
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
            with _busy_is_refusal():
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
                await _seed(db)
                log.info("orders database %s filled with demo data", self.path)

    # Set-up helpers (seeding, tests, admin scripts) -------------------------------------

    async def add_tenant(self, tenant_id: str, name: str | None = None) -> None:
        async with self.transaction() as db:
            await _ensure_tenant(db, tenant_id, name)

    async def add_products(self, tenant_id: str, products: Iterable[Product]) -> None:
        async with self.transaction() as db:
            await _ensure_tenant(db, tenant_id)
            await _insert_products(db, tenant_id, products)

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
        wanted = _merge_items(items)
        async with self.transaction() as db:
            lines: list[tuple[str, str, int, int]] = []
            for sku, quantity in wanted.items():
                async with db.execute(
                    "SELECT name, price_cents, stock FROM products WHERE tenant_id = ? AND sku = ?",
                    (tenant_id, sku),
                ) as cursor:
                    product = await cursor.fetchone()
                if product is None:
                    raise OrderError(f"there is no product with SKU {sku}")
                if product["stock"] < quantity:
                    if product["stock"] == 0:
                        raise OrderError(f"{product['name']} ({sku}) is out of stock")
                    raise OrderError(
                        f"only {product['stock']} of {product['name']} ({sku}) are in stock,"
                        f" but {quantity} were asked for"
                    )
                cursor = await db.execute(
                    "UPDATE products SET stock = stock - ? WHERE tenant_id = ? AND sku = ? AND stock >= ?",
                    (quantity, tenant_id, sku, quantity),
                )
                if cursor.rowcount != 1:  # belt and braces: the lock already rules this out
                    raise OrderError(f"{product['name']} ({sku}) just sold out")
                lines.append((sku, product["name"], quantity, product["price_cents"]))
            await _ensure_tenant(db, tenant_id)
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
                _INSERT_ITEM,
                [(tenant_id, order_id, n, *line) for n, line in enumerate(lines, start=1)],
            )
            return await _load_order(db, tenant_id, order_id, email)

    async def update_shipping_address(
        self, tenant_id: str, order_id: str, email: str, address: str
    ) -> dict[str, Any]:
        async with self.transaction() as db:
            order = await _load_order(db, tenant_id, order_id, email)
            _require_status(order, CHANGEABLE, "have its shipping address changed")
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
            if order["status"] == "cancelled":
                raise OrderError(f"order {order_id} is already cancelled")
            _require_status(order, CHANGEABLE, "be cancelled")
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
            order = await _load_order(db, tenant_id, order_id, email)
            if order["status"] == "return_requested":
                raise OrderError(f"a return has already been requested for order {order_id}")
            if order["status"] != "delivered":
                raise OrderError(
                    f"order {order_id} is {order['status']}; a return can only be requested"
                    " once the order has been delivered"
                )
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


def _not_found(order_id: str) -> OrderError:
    # The same words whether the order is absent, another customer's or another tenant's.
    return OrderError(f"I could not find order {order_id} for that email")


def _require_status(order: dict[str, Any], allowed: Sequence[str], action: str) -> None:
    if order["status"] not in allowed:
        raise OrderError(
            f"order {order['order_id']} is {order['status']}, so it can no longer {action};"
            f" that is only possible while an order is {' or '.join(allowed)}"
        )


def _merge_items(items: Sequence[tuple[str, int]]) -> dict[str, int]:
    if not items:
        raise OrderError("an order needs at least one item")
    wanted: dict[str, int] = {}
    for sku, quantity in items:
        sku = sku.strip().upper()
        if not 1 <= quantity <= MAX_QUANTITY:
            raise OrderError(f"the quantity of {sku} must be between 1 and {MAX_QUANTITY}")
        wanted[sku] = wanted.get(sku, 0) + quantity
        if wanted[sku] > MAX_QUANTITY:
            raise OrderError(f"at most {MAX_QUANTITY} of {sku} can be ordered at once")
    return wanted


async def _load_order(db: aiosqlite.Connection, tenant_id: str, order_id: str, email: str) -> dict[str, Any]:
    async with db.execute(
        "SELECT o.*, c.name AS customer_name FROM orders o JOIN customers c"
        " ON c.tenant_id = o.tenant_id AND c.email = o.customer_email"
        " WHERE o.tenant_id = ? AND o.id = ? AND o.customer_email = ?",
        (tenant_id, order_id, email.lower()),
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise _not_found(order_id)
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


async def _ensure_tenant(db: aiosqlite.Connection, tenant_id: str, name: str | None = None) -> None:
    await db.execute(
        "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (tenant_id, name or tenant_id, now_iso()),
    )


async def _insert_products(db: aiosqlite.Connection, tenant_id: str, products: Iterable[Product]) -> None:
    await db.executemany(
        "INSERT INTO products (tenant_id, sku, name, description, category, price_cents, stock)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, sku) DO NOTHING",
        [(tenant_id, p.sku, p.name, p.description, p.category, p.price_cents, p.stock) for p in products],
    )


async def _next_order_id(db: aiosqlite.Connection, tenant_id: str) -> str:
    async with db.execute(
        "SELECT max(CAST(substr(id, ?) AS INTEGER)) FROM orders WHERE tenant_id = ? AND id LIKE ?",
        (len(ORDER_PREFIX) + 1, tenant_id, ORDER_PREFIX + "%"),
    ) as cursor:
        row = await cursor.fetchone()
    last = row[0] if row and row[0] is not None else FIRST_ORDER_NUMBER - 1
    return f"{ORDER_PREFIX}{max(int(last) + 1, FIRST_ORDER_NUMBER)}"


async def _seed(db: aiosqlite.Connection) -> None:
    """Demo data of API.md; `DO NOTHING` on conflict keeps it idempotent even if run twice."""
    tenant = demo_data.DEMO_TENANT
    await _ensure_tenant(db, tenant, "Demo Shop")
    await _insert_products(db, tenant, demo_data.CATALOG)
    stamp = datetime.now(UTC).replace(microsecond=0)
    for email, name in demo_data.CUSTOMERS:
        await db.execute(
            "INSERT INTO customers (tenant_id, email, name, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, email) DO NOTHING",
            (tenant, email, name, (stamp - timedelta(days=90)).isoformat().replace("+00:00", "Z")),
        )
    prices = {p.sku: p for p in demo_data.CATALOG}
    for order in demo_data.ORDERS:
        created = (stamp - timedelta(days=order.days_ago)).isoformat().replace("+00:00", "Z")
        total = sum(prices[sku].price_cents * quantity for sku, quantity in order.items)
        cursor = await db.execute(
            "INSERT INTO orders (tenant_id, id, customer_email, status, shipping_address, total_cents,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, id) DO NOTHING",
            (tenant, order.id, order.email, order.status, order.shipping_address, total, created, created),
        )
        if cursor.rowcount != 1:
            continue
        await db.executemany(
            _INSERT_ITEM,
            [
                (tenant, order.id, n, sku, prices[sku].name, quantity, prices[sku].price_cents)
                for n, (sku, quantity) in enumerate(order.items, start=1)
            ],
        )
