"""The shop's state as the evaluation compares it: orders (with items) and the outbox, read read-only."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ORDERS = (
    "SELECT o.id, o.status, o.customer_email, coalesce(c.name, ''), o.shipping_address, o.cancel_reason,"
    " o.return_reason, o.total_cents FROM orders o LEFT JOIN customers c ON c.tenant_id = o.tenant_id"
    " AND c.email = o.customer_email WHERE o.tenant_id = ? ORDER BY o.id"
)
_ITEMS = "SELECT order_id, sku, quantity FROM order_items WHERE tenant_id = ? ORDER BY order_id, line_no"
_MAILS = "SELECT recipient, subject FROM outbox WHERE tenant_id = ? ORDER BY created_at, rowid"
_FIELDS = ("status", "customer_email", "customer_name", "shipping_address", "cancel_reason", "return_reason")


@dataclass(frozen=True, slots=True)
class ShopState:
    """Orders by id (the fields a task may state) and the outbox's mails, in order."""

    orders: dict[str, dict[str, Any]]
    mails: list[dict[str, str]]
    customers: frozenset[str]


def read_state(db_path: Path, tenant_id: str = "default") -> ShopState:
    """A snapshot of one tenant's orders and outbox (the database is opened read-only)."""
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        items: dict[str, list[list[Any]]] = {}
        for order_id, sku, quantity in db.execute(_ITEMS, (tenant_id,)):
            items.setdefault(order_id, []).append([sku, quantity])
        orders = {}
        for row in db.execute(_ORDERS, (tenant_id,)):
            orders[row[0]] = {
                **dict(zip(_FIELDS, row[1:7], strict=True)),
                "total": f"${row[7] / 100:.2f}",
                "items": items.get(row[0], []),
            }
        mails = [{"to": r[0], "subject": r[1]} for r in db.execute(_MAILS, (tenant_id,))]
        customers = frozenset(
            r[0] for r in db.execute("SELECT email FROM customers WHERE tenant_id = ?", (tenant_id,))
        )
    return ShopState(orders, mails, customers)


def edit_products(db_path: Path, edits: dict[str, dict[str, Any]], tenant_id: str = "default") -> None:
    """Apply a task's product edits (description, stock) to a trial's fresh database."""
    with closing(sqlite3.connect(db_path)) as db, db:
        for sku, fields in edits.items():
            for name, value in fields.items():
                if name not in ("description", "stock"):
                    raise ValueError(f"a task may not edit the product field {name!r}")
                changed = db.execute(
                    f"UPDATE products SET {name} = ? WHERE tenant_id = ? AND sku = ?",  # noqa: S608 - name checked
                    (value, tenant_id, sku),
                ).rowcount
                if not changed:
                    raise ValueError(f"the setup edits product {sku!r}, which the demo catalog does not have")


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (whatever WAL state the source is in)."""
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
