"""The catalog behind `search_products`: read-only SQLite rows, ranked by relevance with SQLite FTS5.

The orders database is opened read-only, so the full-text index lives in memory: built from the
products on the first search and rebuilt only when their text changes. Words are stemmed by FTS5's
porter tokenizer ("headphones" finds "headphone", "cancelling" finds "cancel"); a small table adds
what stemming cannot (mice → mouse, earphones → earbuds). Every word of the query must match; only
when nothing matches them all do products matching some of them count. "cheapest", "under $50"
and the like are read from the query (or given as arguments) and applied after matching.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite
from mcp.server.mcpserver.exceptions import ToolError

log = logging.getLogger(__name__)

MAX_PRODUCT_RESULTS = 8
Sort = Literal["relevance", "price_low_to_high", "price_high_to_low"]

# Words that name something the catalog calls otherwise; stemming already folds plurals and -ing.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "mice": ("mouse",),
    "earphone": ("earbuds", "headphones"),
    "earphones": ("earbuds", "headphones"),
    "airpods": ("earbuds",),
    "buds": ("earbuds",),
    "headset": ("headphones",),
    "headsets": ("headphones",),
    "screen": ("monitor",),
    "display": ("monitor",),
    "cord": ("cable",),
    "lead": ("cable",),
    "mic": ("microphone",),
    "camera": ("webcam",),
    "cam": ("webcam",),
    "gamepad": ("controller",),
    "joystick": ("controller",),
    "powerbank": ("power bank",),
    "bag": ("backpack",),
    "rucksack": ("backpack",),
    "notebook": ("laptop",),
    "wifi": ("wi fi",),
    "smartwatch": ("watch",),
    "light": ("lamp",),
    "socket": ("plug",),
    "outlet": ("plug",),
    "dock": ("hub",),
    "adapter": ("hub",),
}

_WORD = re.compile(r"[a-z0-9]+")
# Words of a request that say nothing about the product itself.
_NOISE = frozenset(
    "a an and are as at be by can do does for from have how i in is it me my of on or our sell the to "
    "what when where which with you your we any there this that get got buy one ones some something "
    "cheap cheapest cheaper price prices priced cost costs much need want looking look find show tell "
    "good best please product products item items thing things shop store available stock like would "
    "could under below less than over above more most expensive dollar dollars usd budget affordable "
    "inexpensive lowest highest least up max maximum min minimum around about anything sold carry offer "
    "have has recommend recommended new s t m d re ll ve don doesn isn aren".split()
)
_MAX_PRICE = re.compile(
    r"(?:under|below|less than|cheaper than|up to|no more than|at most|max(?:imum)?|<|<=)\s*"
    r"(?:\$|usd\s*)?(\d+(?:\.\d{1,2})?)\s*(?:\$|dollars?|usd)?",
    re.I,
)
_CHEAPEST = re.compile(
    r"\b(?:cheapest|least expensive|lowest[- ]priced?|lowest price|most affordable|cheap|budget"
    r"|inexpensive)\b",
    re.I,
)
_DEAREST = re.compile(
    r"\b(?:most expensive|priciest|highest[- ]priced?|highest price|top of the range)\b", re.I
)


@dataclass(frozen=True, slots=True)
class ProductQuery:
    """A search read from the customer's words: product terms, a price cap and an order."""

    groups: tuple[tuple[str, ...], ...]  # each group: a word and its synonyms, any of which may match
    max_price_cents: int | None = None
    sort: Sort = "relevance"


def read_query(text: str, max_price: float | None = None, sort: Sort | None = None) -> ProductQuery:
    """ "cheapest wireless mice under $50" → ((wireless,), (mice, mouse)), 5000 cents, price low to high."""
    cap = _MAX_PRICE.search(text)
    if max_price is None and cap:
        max_price = float(cap.group(1))
    if sort is None:
        sort = "price_low_to_high" if _CHEAPEST.search(text) else "relevance"
        if _DEAREST.search(text):
            sort = "price_high_to_low"
    words = _WORD.findall(_MAX_PRICE.sub(" ", text).lower())
    groups: list[tuple[str, ...]] = []
    for word in words:
        if word in _NOISE or (word.isdigit() and len(word) < 3):
            continue
        group = (word, *SYNONYMS.get(word, ()))
        if group not in groups:
            groups.append(group)
    cents = round(max_price * 100) if max_price is not None and max_price > 0 else None
    return ProductQuery(tuple(groups), cents, sort)


def _fts(groups: Sequence[tuple[str, ...]], every: bool) -> str:
    """An FTS5 expression; every word is quoted, so no customer word is read as an operator."""
    parts = ["(" + " OR ".join(f'"{alternative}"' for alternative in group) + ")" for group in groups]
    return (" AND " if every else " OR ").join(parts)


class ProductIndex:
    """An in-memory FTS5 index of the catalog's text, rebuilt when that text changes."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:")
        self._db.execute(
            "CREATE VIRTUAL TABLE products USING fts5("
            "sku, name, category, description, tokenize = 'porter unicode61 remove_diacritics 2')"
        )
        self._signature: int | None = None

    def refresh(self, rows: Sequence[dict[str, Any]]) -> None:
        fields = tuple((r["sku"], r["name"], r["category"] or "", r["description"] or "") for r in rows)
        signature = hash(fields)
        if signature == self._signature:
            return
        with self._db:
            self._db.execute("DELETE FROM products")
            self._db.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", fields)
        self._signature = signature

    def ranked(self, groups: Sequence[tuple[str, ...]]) -> list[str]:
        """SKUs matching every group, best first; when none does, those matching any group."""
        for every in (True, False):
            rows = self._db.execute(
                "SELECT sku FROM products WHERE products MATCH ? ORDER BY bm25(products, 4.0, 3.0, 2.0, 1.0)",
                (_fts(groups, every),),
            ).fetchall()
            if rows or len(groups) < 2:
                return [row[0] for row in rows]
        return []


class CatalogUnavailable(ToolError):
    """The orders database cannot be read; the model should say so, not guess."""


def is_database_url(db: Path | str) -> bool:
    return isinstance(db, str) and db.split("://", 1)[0] in ("postgresql", "postgres")


class Catalog:
    """Read-only access to the products table of one tenant: a SQLite file, or PostgreSQL by URL."""

    def __init__(self, db_path: Path | str, tenant_id: str = "default") -> None:
        self.url = str(db_path) if is_database_url(db_path) else None
        self.db_path = Path("") if self.url else Path(db_path)
        self.tenant_id = tenant_id
        self.index = ProductIndex()
        self._pool: Any = None  # asyncpg's pool, made on the first PostgreSQL query

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _postgres_rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        import asyncpg  # only a server pointed at PostgreSQL loads it

        from msev15.stores.postgres import numbered

        try:
            if self._pool is None:
                # Read-only sessions: this process must never write the shop's database.
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=0,
                    max_size=2,
                    timeout=5,
                    command_timeout=10,
                    server_settings={"default_transaction_read_only": "on", "application_name": "msev15-mcp"},
                )
            async with self._pool.acquire(timeout=5) as conn:
                return [dict(row) for row in await conn.fetch(numbered(sql), *params)]
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("catalog query failed: %s", type(exc).__name__)
            raise CatalogUnavailable("The product catalog is not available right now.") from None

    def _uri(self) -> str:
        # mode=ro: this process must never write the orders database another process owns.
        return self.db_path.resolve().as_uri() + "?mode=ro"

    async def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        if self.url is not None:
            return await self._postgres_rows(sql, params)
        if not self.db_path.exists():
            raise CatalogUnavailable("The product catalog is not available right now.")
        try:
            async with aiosqlite.connect(self._uri(), uri=True) as db:
                db.row_factory = aiosqlite.Row
                async with db.execute(sql, params) as cursor:
                    return [dict(row) for row in await cursor.fetchall()]
        except aiosqlite.Error as exc:
            log.warning("catalog query failed: %s", exc)
            raise CatalogUnavailable("The product catalog is not available right now.") from None

    async def search(self, query: ProductQuery, limit: int = MAX_PRODUCT_RESULTS) -> list[dict[str, Any]]:
        """Products by relevance (or price, when asked), within the price cap."""
        rows = await self._rows(
            "SELECT sku, name, description, category, price_cents, stock FROM products"
            " WHERE tenant_id = ? ORDER BY sku",
            (self.tenant_id,),
        )
        self.index.refresh(rows)
        by_sku = {row["sku"]: row for row in rows}
        if query.groups:
            found = [by_sku[sku] for sku in self.index.ranked(query.groups) if sku in by_sku]
        elif query.max_price_cents is not None or query.sort != "relevance":
            found = rows  # "what is the cheapest thing you sell?": the whole catalog, ordered
        else:
            found = []
        if query.max_price_cents is not None:
            found = [row for row in found if row["price_cents"] <= query.max_price_cents]
        if query.sort != "relevance":  # stable: equal prices keep their relevance order
            found = sorted(found, key=lambda r: r["price_cents"], reverse=query.sort == "price_high_to_low")
        return [product_view(row) for row in found[:limit]]

    async def get(self, sku: str) -> dict[str, Any] | None:
        rows = await self._rows(
            "SELECT sku, name, description, category, price_cents, stock FROM products "
            "WHERE tenant_id = ? AND upper(sku) = upper(?)",
            (self.tenant_id, sku.strip()),
        )
        return product_view(rows[0]) if rows else None


def product_view(row: dict[str, Any]) -> dict[str, Any]:
    """What the model sees of a product: the price as text too, so it is never mis-scaled."""
    cents = int(row["price_cents"])
    stock = int(row["stock"])
    return {
        "sku": row["sku"],
        "name": row["name"],
        "category": row["category"],
        "description": row["description"],
        "price": f"{cents / 100:.2f}",
        "currency": "USD",
        "stock": stock,
        "in_stock": stock > 0,
    }
