"""The orders database's schema, its migrations (one list per engine) and the demo data of a new database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from msev15.stores import demo_data
from msev15.stores.demo_data import Product
from msev15.stores.sql import Sql


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    (
        # Printed on the shop's prepaid return labels; the demo shop's is filled in.
        "ALTER TABLE tenants ADD COLUMN return_address TEXT NOT NULL DEFAULT ''",
        "UPDATE tenants SET return_address = 'Returns Department' || char(10) || '100 Warehouse Way'"
        " || char(10) || 'Springfield, IL 62701' || char(10) || 'United States'"
        " WHERE id = 'default' AND name = 'Demo Shop' AND return_address = ''",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# PostgreSQL's own list, versioned in the table schema_version. Version 1 is the SQLite schema
# above at its version 3 plus the audit log (which SQLite keeps in audit.py's own schema). Ids and
# timestamps compare byte for byte ("C" collation), as SQLite's do, whatever the server's locale.
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE tenants (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            return_address TEXT NOT NULL DEFAULT ''
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
            id TEXT COLLATE "C" NOT NULL,
            customer_email TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('pending', 'processing', 'shipped', 'delivered', 'cancelled', 'return_requested')),
            shipping_address TEXT NOT NULL,
            total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
            created_at TEXT COLLATE "C" NOT NULL,
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
        """CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            recipient TEXT NOT NULL,
            subject TEXT NOT NULL,
            raw BYTEA NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'delivered', 'undelivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            last_error TEXT,
            created_at TEXT NOT NULL,
            delivered_at TEXT
        )""",
        "CREATE INDEX outbox_due ON outbox (status, next_attempt_at)",
        """CREATE TABLE audit_events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            tool TEXT NOT NULL,
            arguments TEXT NOT NULL,
            ok INTEGER,
            error TEXT,
            duration_ms DOUBLE PRECISION,
            decision TEXT,
            user_id TEXT
        )""",
        "CREATE INDEX audit_tenant_id ON audit_events (tenant_id, id)",
        "CREATE INDEX audit_tenant_session_id ON audit_events (tenant_id, session_id, id)",
    ),
)
PG_SCHEMA_VERSION = len(PG_MIGRATIONS)
# pg_advisory_xact_lock key: instances starting at once on one database migrate and seed in turn.
PG_MIGRATION_LOCK = 0x6D736576_3135  # "msev15"

INSERT_ITEM = (
    "INSERT INTO order_items (tenant_id, order_id, line_no, sku, name, quantity, unit_price_cents)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


async def ensure_tenant(db: Sql, tenant_id: str, name: str | None = None, return_address: str = "") -> None:
    await db.execute(
        "INSERT INTO tenants (id, name, return_address, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (tenant_id, name or tenant_id, return_address, now_iso()),
    )


async def insert_products(db: Sql, tenant_id: str, products: Iterable[Product]) -> None:
    await db.executemany(
        "INSERT INTO products (tenant_id, sku, name, description, category, price_cents, stock)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, sku) DO NOTHING",
        [(tenant_id, p.sku, p.name, p.description, p.category, p.price_cents, p.stock) for p in products],
    )


async def seed_demo_data(db: Sql) -> None:
    """Demo data of API.md; `DO NOTHING` on conflict keeps it idempotent even if run twice."""
    tenant = demo_data.DEMO_TENANT
    await ensure_tenant(db, tenant, demo_data.DEMO_SHOP_NAME, demo_data.DEMO_RETURN_ADDRESS)
    await insert_products(db, tenant, demo_data.CATALOG)
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
        added = await db.execute(
            "INSERT INTO orders (tenant_id, id, customer_email, status, shipping_address, total_cents,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, id) DO NOTHING",
            (tenant, order.id, order.email, order.status, order.shipping_address, total, created, created),
        )
        if added != 1:
            continue
        await db.executemany(
            INSERT_ITEM,
            [
                (tenant, order.id, n, sku, prices[sku].name, quantity, prices[sku].price_cents)
                for n, (sku, quantity) in enumerate(order.items, start=1)
            ],
        )
