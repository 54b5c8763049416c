"""The SQLite order path's own speed: get_order, and create_order + cancel_order, p50 of one at a time.

Run it against two checkouts to compare them (it imports msev15 from PYTHONPATH):
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/orders_sqlite.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from msev15.stores.orders import OrderRepository


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = await OrderRepository.open(Path(tmp) / "o.db", seed=True)

        async def get() -> None:
            await repo.get_order("default", "ORD-1001", "alice@example.com")

        async def create() -> None:
            o = await repo.create_order("default", "c@example.com", "C", [("CBL-USBC2M", 1)], "1 St")
            await repo.cancel_order("default", o["order_id"], "c@example.com", "")

        out = []
        for fn, n in ((get, 3000), (create, 500)):
            for _ in range(100):
                await fn()
            s = []
            for _ in range(n):
                t = time.perf_counter()
                await fn()
                s.append(time.perf_counter() - t)
            out.append(statistics.median(s) * 1e6)
        await repo.close()
        print(f"get_order p50 {out[0]:.0f} us; create+cancel p50 {out[1]:.0f} us")  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
