"""Which database layer for orders: asyncpg and aiosqlite directly, or SQLAlchemy 2 Core over both.

The engine choice of issue 18, measured: the same read (get_order's two queries) and the same
write transaction (take and put back one unit of stock under a row lock) on each layer, one at a
time, on a throwaway PostgreSQL (tests/postgres_server.py) and a temp SQLite file, in one run.

SQLAlchemy is not a project dependency; install it beside the venv for this script only:
    .venv/bin/pip install --target /tmp/sa 'sqlalchemy==2.1.9'
    PYTHONPATH=/tmp/sa .venv/bin/python bench/engines.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosqlite  # noqa: E402
import asyncpg  # noqa: E402

from msev15.stores import database as sqlitedb  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

SCHEMA = (
    "CREATE TABLE customers (tenant_id TEXT, email TEXT, name TEXT, PRIMARY KEY (tenant_id, email))",
    "CREATE TABLE orders (tenant_id TEXT, id TEXT, customer_email TEXT, status TEXT, total_cents INTEGER,"
    " PRIMARY KEY (tenant_id, id))",
    "CREATE TABLE order_items (tenant_id TEXT, order_id TEXT, line_no INTEGER, sku TEXT, quantity INTEGER,"
    " PRIMARY KEY (tenant_id, order_id, line_no))",
    "CREATE TABLE products (tenant_id TEXT, sku TEXT, stock INTEGER, PRIMARY KEY (tenant_id, sku))",
    "INSERT INTO customers VALUES ('default', 'a@example.com', 'Alice')",
    "INSERT INTO orders VALUES ('default', 'ORD-1001', 'a@example.com', 'pending', 1000)",
    "INSERT INTO order_items VALUES ('default', 'ORD-1001', 1, 'SKU-1', 2),"
    " ('default', 'ORD-1001', 2, 'SKU-2', 1)",
    "INSERT INTO products VALUES ('default', 'SKU-1', 1000000)",
)
ORDER = (
    "SELECT o.*, c.name AS customer_name FROM orders o JOIN customers c ON c.tenant_id = o.tenant_id"
    " AND c.email = o.customer_email WHERE o.tenant_id = {0} AND o.id = {1} AND o.customer_email = {2}"
)
ITEMS = "SELECT sku, quantity FROM order_items WHERE tenant_id = {0} AND order_id = {1} ORDER BY line_no"
LOCK = "SELECT stock FROM products WHERE tenant_id = {0} AND sku = {1}"
TAKE = "UPDATE products SET stock = stock - 1 WHERE tenant_id = {0} AND sku = {1}"
GIVE = "UPDATE products SET stock = stock + 1 WHERE tenant_id = {0} AND sku = {1}"
ARGS = ("default", "ORD-1001", "a@example.com")


def q(sql: str) -> str:
    return sql.format("?", "?", "?")


def pg(sql: str) -> str:
    return sql.format("$1", "$2", "$3")


def named(sql: str) -> str:
    return sql.format(":a", ":b", ":c")


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    """p50 of n calls, in microseconds (after 200 warm-up calls)."""
    for _ in range(200):
        await fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


async def run(n: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        db = await sqlitedb.connect(path)
        db.row_factory = aiosqlite.Row
        for statement in SCHEMA:
            await db.execute(statement)
        lock = asyncio.Lock()

        async def sqlite_read() -> None:
            async with lock:
                async with db.execute(q(ORDER), ARGS) as cursor:
                    await cursor.fetchone()
                async with db.execute(q(ITEMS), ARGS[:2]) as cursor:
                    await cursor.fetchall()

        async def sqlite_write() -> None:
            async with lock:
                await db.execute("BEGIN IMMEDIATE")
                async with db.execute(q(LOCK), ("default", "SKU-1")) as cursor:
                    await cursor.fetchone()
                await db.execute(q(TAKE), ("default", "SKU-1"))
                await db.execute(q(GIVE), ("default", "SKU-1"))
                await db.commit()

        results["SQLite: aiosqlite (today's path)"] = (
            await timed(sqlite_read, n),
            await timed(sqlite_write, n),
        )
        await db.close()

        server = PostgresServer()
        server.init()
        server.start()
        try:
            admin = await asyncpg.connect(server.admin_url)
            await admin.execute("CREATE DATABASE bench")
            await admin.close()
            pool = await asyncpg.create_pool(server.url("bench"), min_size=1, max_size=4)
            async with pool.acquire() as conn:
                for statement in SCHEMA:
                    await conn.execute(statement)

            async def pg_read() -> None:
                async with pool.acquire() as conn:
                    await conn.fetchrow(pg(ORDER), *ARGS)
                    await conn.fetch(pg(ITEMS), *ARGS[:2])

            async def pg_write() -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.fetchrow(pg(LOCK) + " FOR UPDATE", "default", "SKU-1")
                    await conn.execute(pg(TAKE), "default", "SKU-1")
                    await conn.execute(pg(GIVE), "default", "SKU-1")

            results["PostgreSQL: asyncpg"] = (await timed(pg_read, n), await timed(pg_write, n))
            await pool.close()
            results.update(await run_sqlalchemy(path, server.url("bench"), n))
        finally:
            server.remove()
    return results


async def run_sqlalchemy(path: Path, url: str, n: int) -> dict[str, tuple[float, float]]:
    try:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError:
        print("SQLAlchemy is not installed: only the direct drivers were measured", file=sys.stderr)  # noqa: T201
        return {}
    out: dict[str, tuple[float, float]] = {}
    order, items = text(named(ORDER)), text(named(ITEMS))
    lock, take, give = text(named(LOCK)), text(named(TAKE)), text(named(GIVE))
    lock_pg = text(named(LOCK) + " FOR UPDATE")
    params = {"a": ARGS[0], "b": ARGS[1], "c": ARGS[2]}
    stock = {"a": "default", "b": "SKU-1"}
    for label, engine_url, row_lock in (
        ("SQLite: SQLAlchemy Core over aiosqlite", f"sqlite+aiosqlite:///{path}", lock),
        (
            "PostgreSQL: SQLAlchemy Core over asyncpg",
            url.replace("postgresql://", "postgresql+asyncpg://"),
            lock_pg,
        ),
    ):
        engine = create_async_engine(engine_url, pool_size=4)

        async def read(engine: Any = engine) -> None:
            async with engine.connect() as conn:
                (await conn.execute(order, params)).first()
                (await conn.execute(items, params)).all()

        async def write(row_lock: Any = row_lock, engine: Any = engine) -> None:
            async with engine.begin() as conn:
                (await conn.execute(row_lock, stock)).first()
                await conn.execute(take, stock)
                await conn.execute(give, stock)

        out[label] = (await timed(read, n), await timed(write, n))
        await engine.dispose()
    return out


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    results = asyncio.run(run(n))
    print(f"| layer | get_order read p50 (µs) | stock write transaction p50 (µs) |  (n={n})")  # noqa: T201
    print("|---|---:|---:|")  # noqa: T201
    for label, (read, write) in results.items():
        print(f"| {label} | {read:.0f} | {write:.0f} |")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
