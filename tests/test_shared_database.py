"""Several instances on one PostgreSQL database: one shop, each change once, each mail once.

An "instance" here is what a host runs: its own connection pool, repository, tools and mail
sender, on the shared database. The SIGKILL test runs the other instance as a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from msev15 import ROOT, create_app
from msev15.mail.render import render_message
from msev15.mail.sender import Mailer
from msev15.mcp_server.catalog import Catalog, read_query
from msev15.stores.demo_data import CATALOG, Product
from msev15.stores.order_rules import DatabaseBusy
from msev15.stores.orders import OrderRepository
from msev15.stores.sql import fetchval
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolContext, ToolRegistry, ToolResult
from tests.conftest import MakeModelSettings, make_settings, order_status
from tests.engines import drop_database, new_database, open_postgres
from tests.helpers import eventually, free_port
from tests.openai_server import Reply, ScriptedOpenAI
from tests.postgres_server import PostgresServer
from tests.smtp_server import running_smtp_server

ALICE = "alice@example.com"
ORDER = {"order_id": "ORD-1001", "customer_email": ALICE}


class Instance:
    """One host's view of the shop: its own pool, repository and tools."""

    def __init__(self, repo: OrderRepository) -> None:
        self.repo = repo
        self.tools = ToolRegistry(default_timeout=10.0)
        self.tools.register_all(order_tools(repo))

    async def call(self, name: str, args: dict[str, Any]) -> ToolResult:
        return await self.tools.call(name, args, ToolContext("default", "s", "r"))


@pytest.fixture
async def url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    made = await new_database(postgres_server, seeded=True)
    yield made
    await drop_database(postgres_server, made)


@pytest.fixture
async def two(url: str) -> AsyncIterator[tuple[Instance, Instance]]:
    a, b = await open_postgres(url, seed=True), await open_postgres(url, seed=True)
    yield Instance(a), Instance(b)
    await a.close()
    await b.close()


async def count(repo: OrderRepository, sql: str, *params: Any) -> int:
    async with repo.reading() as db:
        return int(await fetchval(db, sql, params))


async def test_instances_starting_at_once_on_an_empty_database_migrate_and_seed_it_once(
    postgres_server: PostgresServer,
) -> None:
    empty = await new_database(postgres_server, seeded=False)
    repos = await asyncio.gather(*(open_postgres(empty, seed=True, pool_size=2) for _ in range(4)))
    try:
        first = repos[0]
        assert await count(first, "SELECT count(*) FROM schema_version") == 1
        assert await count(first, "SELECT count(*) FROM orders") == 4
        assert await count(first, "SELECT count(*) FROM products") == len(CATALOG)
        assert await count(first, "SELECT count(*) FROM tenants") == 1
    finally:
        await asyncio.gather(*(repo.close() for repo in repos))


async def test_two_apps_on_one_database_url_serve_one_shop(
    url: str, make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    """Two whole services (as two hosts would run them): a cancel through A's chat is B's truth."""
    settings = make_model_settings(database_url=url, require_confirmation=False)
    first, second = create_app(settings), create_app(settings)
    async with first.test_app() as app_a, second.test_app() as app_b:
        openai_server.push(Reply.call("cancel_order", {**ORDER, "reason": "moved"}), Reply.say("Cancelled."))
        body = await (
            await app_a.test_client().post("/api/v1/chat", json={"session_id": "a", "message": "x"})
        ).get_json()
        assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [("cancel_order", True)]
        assert await order_status(second, "ORD-1001") == "cancelled"
        openai_server.push(Reply.call("cancel_order", {**ORDER, "reason": "again"}), Reply.say("Already."))
        again = await (
            await app_b.test_client().post("/api/v1/chat", json={"session_id": "b", "message": "x"})
        ).get_json()
        assert [(c["name"], c["ok"]) for c in again["tool_calls"]] == [("cancel_order", False)]
        assert "already cancelled" in openai_server.requests[-1]["messages"][-1]["content"]


async def test_a_cancel_on_one_instance_is_seen_on_the_other(two: tuple[Instance, Instance]) -> None:
    a, b = two
    assert (await b.call("get_order", {"order_id": "ORD-1001", "customer_email": ALICE})).ok
    assert (await a.call("cancel_order", {"order_id": "ORD-1001", "customer_email": ALICE, "reason": ""})).ok
    seen = await b.call("get_order", {"order_id": "ORD-1001", "customer_email": ALICE})
    assert seen.ok and '"status":"cancelled"' in (seen.content or "").replace(" ", "")
    again = await b.call("cancel_order", {"order_id": "ORD-1001", "customer_email": ALICE, "reason": ""})
    assert not again.ok and "already cancelled" in (again.error or "")


async def test_twenty_concurrent_cancels_across_two_instances_succeed_exactly_once(
    two: tuple[Instance, Instance],
) -> None:
    a, b = two
    before = await a.repo.product("default", "HDP-NC100")
    args = {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "twice"}
    results = await asyncio.gather(*((a if i % 2 else b).call("cancel_order", args) for i in range(20)))
    assert sum(r.ok for r in results) == 1
    assert all("already cancelled" in (r.error or "") for r in results if not r.ok)
    after = await b.repo.product("default", "HDP-NC100")
    assert before is not None and after is not None
    assert after["stock"] == before["stock"] + 1  # ORD-1001 held one: given back once


async def test_buyers_of_the_last_units_on_two_instances_never_oversell(
    two: tuple[Instance, Instance],
) -> None:
    a, b = two
    await a.repo.add_products("default", [Product("LAST-1", "Last One", "", "misc", 1000, 1)])
    await a.repo.add_products("default", [Product("LAST-3", "Last Three", "", "misc", 1000, 3)])

    def order(sku: str, i: int) -> dict[str, Any]:
        email = f"buyer{i}@example.com"
        return {"customer_email": email, "customer_name": "B", "items": [{"sku": sku, "quantity": 1}],
                "shipping_address": "1 Main St"}  # fmt: skip

    results = await asyncio.gather(
        a.call("create_order", order("LAST-1", 0)), b.call("create_order", order("LAST-1", 1))
    )
    assert sorted(r.ok for r in results) == [False, True]
    assert "out of stock" in (next(r for r in results if not r.ok).error or "")
    many = await asyncio.gather(
        *((a if i % 2 else b).call("create_order", order("LAST-3", i)) for i in range(8))
    )
    assert sum(r.ok for r in many) == 3
    for sku, sold in (("LAST-1", 1), ("LAST-3", 3)):
        assert await count(a.repo, "SELECT stock FROM products WHERE sku = ?", sku) == 0
        assert await count(a.repo, "SELECT count(*) FROM order_items WHERE sku = ?", sku) == sold
    ids = await count(a.repo, "SELECT count(DISTINCT id) FROM orders")
    assert ids == await count(a.repo, "SELECT count(*) FROM orders") == 4 + 4  # order numbers never collide


async def test_a_full_pool_waits_a_bounded_time_then_refuses(url: str) -> None:
    repo = await open_postgres(url, seed=True, pool_size=1, wait_seconds=0.3)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with repo.reading():
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        started = time.monotonic()
        with pytest.raises(DatabaseBusy, match="busy"):
            await repo.get_order("default", "ORD-1001", ALICE)
        assert 0.25 <= time.monotonic() - started < 3.0
        release.set()
        await holder
        assert (await repo.get_order("default", "ORD-1001", ALICE))["status"] == "pending"
    finally:
        await repo.close()


# The outbox shared by several senders -------------------------------------------------------------


def smtp_settings(tmp_path: Path, port: int) -> Any:
    return make_settings(tmp_path, smtp_server="127.0.0.1", smtp_port=port, smtp_use_tls=False)


async def test_smtp_down_then_up_with_two_instances_each_mail_arrives_once(
    two: tuple[Instance, Instance], tmp_path: Path
) -> None:
    a, b = two
    port = free_port()
    senders = [
        Mailer(instance.repo, smtp_settings(tmp_path, port), retry_base=0.05, retry_max=0.2, timeout=2.0)
        for instance in (a, b)
    ]
    mails = [
        await senders[i % 2].enqueue("default", ALICE, render_message(f"m{i}", "b", "S")) for i in range(6)
    ]
    for sender in senders:
        await sender.start()
    try:

        async def all_tried() -> bool:
            rows = [await senders[0].get(m.id) for m in mails]
            return all(r is not None and r["attempts"] >= 1 and r["last_error"] for r in rows)

        await eventually(all_tried, within=10, what="every mail tried while SMTP is down")
        async with running_smtp_server(port=port) as server:
            await server.wait_for(len(mails), limit=15)

            async def delivered() -> bool:
                rows = [await senders[1].get(m.id) for m in mails]
                return all(r is not None and r["status"] == "delivered" for r in rows)

            await eventually(delivered, within=10, what="every mail marked delivered")
            for sender in senders:  # extra passes on both instances send nothing again
                await sender.deliver_due()
            received = sorted(str(m.message["Message-ID"]) for m in server.mails)
    finally:
        for sender in senders:
            await sender.close()
    assert received == sorted(m.message_id for m in mails)  # each exactly once


def _silent_smtp() -> socket.socket:
    """A port that accepts connections and never greets: a send there hangs while holding its lease."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


async def test_an_instance_killed_while_holding_a_lease_does_not_lose_the_mail(
    url: str, tmp_path: Path
) -> None:
    repo = await open_postgres(url, seed=True)
    silent = _silent_smtp()
    worker: asyncio.subprocess.Process | None = None
    try:
        async with running_smtp_server() as server:
            settings = smtp_settings(tmp_path, server.port)
            survivor = Mailer(repo, settings, timeout=2.0)  # not started: it only queues, for now
            mail = await survivor.enqueue("default", ALICE, render_message("leased", "b", "S"))
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.outbox_worker", url, str(silent.getsockname()[1]),
                cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"}, stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

            async def claimed() -> bool:
                row = await survivor.get(mail.id)
                return row is not None and row["attempts"] == 1

            await eventually(claimed, within=20, what="the other instance claiming the mail")
            os.kill(worker.pid, signal.SIGKILL)  # mid-send, its lease held
            await asyncio.wait_for(worker.wait(), 10)
            assert await survivor.deliver_due() is not None  # still leased: nobody may take it yet
            assert server.mails == []
            # Once the dead instance's lease has run out (60 s x 4 there: this sender's clock is
            # moved past it rather than the test waiting), the mail is due again and goes once.
            later = Mailer(repo, settings, timeout=2.0, clock=lambda: time.time() + 241)
            await later.deliver_due()
            await later.deliver_due()
            [received] = server.mails
            assert received.message["Message-ID"] == mail.message_id
            row = await survivor.get(mail.id)
            assert row is not None and row["status"] == "delivered" and row["attempts"] == 2
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await asyncio.wait_for(worker.wait(), 10)
        silent.close()
        await repo.close()


# The bundled MCP server's catalog -------------------------------------------------------------------


async def test_the_mcp_catalog_reads_the_same_database_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from msev15.mcp_server import server as mcp_server

    monkeypatch.setenv("DATABASE_URL", url)
    assert mcp_server._default_db() == url
    catalog = Catalog(url)
    repo = await open_postgres(url, seed=True)
    try:
        found = await catalog.search(read_query("noise cancelling headphones"))
        assert found and found[0]["sku"] == "HDP-NC100"
        await repo.create_order("default", ALICE, "Alice", [("HDP-NC100", 2)], "1 Main St")
        product = await catalog.get("hdp-nc100")
        assert product is not None and product["stock"] == 23  # the shop's live stock
    finally:
        await catalog.close()
        await repo.close()
