"""`--orders-db`: the orders database on PostgreSQL against SQLite, in one run (issue 18).

Two service instances (1 worker each, on the servers' CPU) differ only in `DATABASE_URL`: one
keeps orders in a SQLite file, the other in a throwaway PostgreSQL on loopback
(tests/postgres_server.py: initdb + pg_ctl, fsync off, on the client's CPU as redis-server is).
The model (bench/tool_model.py, zero latency) makes every turn call a tool, so each turn is two
model calls, one tool and its database work:

- a JSON turn with `get_order`, one at a time (c=1), in many short alternating rounds SQLite /
  PostgreSQL after a warm-up; the bar: PostgreSQL adds at most 2 ms p50 per turn over SQLite;
- `create_order` turns at concurrency 32 (REQUIRE_CONFIRMATION off): orders written per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from bench import loadgen
from bench.common import (
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    CpuMeter,
    Fleet,
    Proc,
    at_most,
    f0,
    f1,
    free_port,
    hypercorn_argv,
    ratio,
    say,
    service_env,
    wait_http,
)
from msev15.stores.demo_data import Product

BENCH_PRODUCT = Product("BENCH-1", "Bench Widget", "A product only the benchmark buys.", "misc", 100, 10**9)


class Sized(Protocol):
    rounds: int
    chat_c1_s: float
    chat_c32_s: float
    chat_conns: int


class Reporting(Protocol):
    notes: list[str]
    cpu: list[str]

    def add(self, *args: Any, **kw: Any) -> None: ...


async def _prepare(sqlite_path: Path, url: str) -> None:
    """Both databases migrated, seeded and given the product the create_order turns buy."""
    from msev15.stores.orders import OrderRepository
    from tests.engines import open_postgres

    for repo in (await OrderRepository.open(sqlite_path, seed=True), await open_postgres(url, seed=True)):
        await repo.add_products("default", [BENCH_PRODUCT])
        await repo.close()


@contextlib.asynccontextmanager
async def postgres(pin: bool) -> AsyncIterator[str]:
    """A throwaway cluster with one database `bench`; its URL. Stopped (by PID) on the way out."""
    import asyncpg

    from tests.postgres_server import PostgresServer

    server = PostgresServer()
    try:
        await asyncio.to_thread(server.init)
        await asyncio.to_thread(server.start)
        if pin and server.pid is not None:
            with contextlib.suppress(OSError):  # backends fork from the postmaster: they inherit it
                os.sched_setaffinity(server.pid, {CLIENT_CPU})
        admin = await asyncpg.connect(server.admin_url)
        await admin.execute("CREATE DATABASE bench")
        await admin.close()
        yield server.url("bench")
    finally:
        await asyncio.to_thread(server.remove)


def _turn(port: int, tag: str, message: str) -> Any:
    def make(i: int) -> bytes:
        body = orjson.dumps({"session_id": f"{tag}-{i}", "message": message})
        return loadgen.http_request("POST", "/api/v1/chat", port, body)

    return make


async def _check_turn(proc: Proc, message: str, tool: str) -> str | None:
    """One turn by hand: the tool ran and succeeded (else the figures would measure a refusal)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
    try:
        body = orjson.dumps({"session_id": f"check-{tool}", "message": message})
        writer.write(loadgen.http_request("POST", "/api/v1/chat", proc.port, body))
        status, payload, _ = await loadgen._read_response(reader)
    finally:
        writer.close()
    if status != 200:
        return f"{proc.name}: {message!r} answered {status}"
    calls = orjson.loads(payload).get("tool_calls", [])
    if [(c["name"], c["ok"]) for c in calls] != [(tool, True)]:
        return f"{proc.name}: {message!r} made {calls}"
    return None


async def run_section(fleet: Fleet, size: Sized, workdir: Path, pin: bool, report: Reporting) -> None:
    """Start the model and the two services, measure, and stop them again."""
    async with postgres(pin) as url:
        sqlite_path = workdir / "orders-db-sqlite.db"
        await _prepare(sqlite_path, url)
        p_model, p_sqlite, p_pg = free_port(), free_port(), free_port()
        model = fleet.start(
            "tool-model", [PYTHON, "-m", "bench.tool_model", "--port", str(p_model)], p_model, CLIENT_CPU
        )
        base = {"REQUIRE_CONFIRMATION": "false", "SEED_DEMO_DATA": "true"}
        services: dict[str, Proc] = {}
        for engine, port, extra in (
            ("sqlite", p_sqlite, {"ORDER_DB_PATH": str(sqlite_path)}),
            ("postgresql", p_pg, {"DATABASE_URL": url}),
        ):
            env = {**service_env(p_model, workdir, f"db-{engine}"), **base, **extra}
            services[engine] = fleet.start(
                f"service-{engine}", hypercorn_argv("app:app", port, 1), port, SERVER_CPU, env
            )
        try:
            wait_http(model, "/v1/models")
            for proc in services.values():
                wait_http(proc, "/health")
            await _measure(services, size, report)
        finally:
            fleet.stop([model, *services.values()])


async def _measure(services: dict[str, Proc], size: Sized, report: Reporting) -> None:
    get_message = "Where is my order ORD-1001? I am alice@example.com"
    buy_message = "I want to buy a widget"
    for proc in services.values():
        for message, tool in ((get_message, "get_order"), (buy_message, "create_order")):
            problem = await _check_turn(proc, message, tool)
            if problem:
                report.notes.append(f"orders-db: {problem}")
    for engine, proc in services.items():  # warm up: connections made, statements prepared
        for message in (get_message, buy_message):
            warm = _turn(proc.port, f"warm-{engine}", message)
            await loadgen.request_loop(proc.port, warm, 4, 5, max_requests=20 * size.rounds)
    results: dict[tuple[str, int], loadgen.LoopResult] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    per_round: dict[str, list[float]] = {}  # c=1 p50 of each round, by engine: paired differences
    # Many short alternating rounds, each engine first in turn: the load other work puts on this
    # shared machine drifts, and must hit both engines alike.
    rounds = 4 * size.rounds  # 12 in the full run
    for conns, duration, message in (
        (1, 2 * size.chat_c1_s, get_message),
        (size.chat_conns, 2 * size.chat_c32_s, buy_message),
    ):
        for n in range(rounds):
            order = list(services.items()) if n % 2 == 0 else list(reversed(services.items()))
            for engine, proc in order:
                meter = CpuMeter(proc.worker_pids())
                make = _turn(proc.port, f"{engine}-c{conns}-r{n}", message)
                part = await loadgen.request_loop(proc.port, make, conns, duration / rounds)
                cpu.setdefault((engine, conns), []).append(meter.percent())
                results.setdefault((engine, conns), loadgen.LoopResult()).merge(part)
                if conns == 1 and part.latencies:
                    per_round.setdefault(engine, []).append(part.ms(50))
                await asyncio.sleep(0.05)
    lite, pg = results[("sqlite", 1)], results[("postgresql", 1)]
    # The bar is judged on the rounds' paired differences (each PostgreSQL round against the SQLite
    # round next to it), which the machine's drifting load hits alike; the pooled p50s are shown too.
    pairs = [
        b - a for a, b in zip(per_round.get("sqlite", []), per_round.get("postgresql", []), strict=False)
    ]
    added = statistics.median(pairs) if pairs else float("nan")
    report.add(
        "get_order JSON turn p50 (ms), c=1: PostgreSQL (baseline SQLite)",
        f1(pg.ms(50)),
        f1(lite.ms(50)),
        ratio(pg.ms(50), lite.ms(50)),
    )
    report.add(
        f"get_order turn: PostgreSQL minus SQLite, median of {len(pairs)} paired round p50s (ms)",
        f"+{f1(added)}",
        "—",
        "—",
        "<= +2 ms p50 over SQLite",
        at_most(added, 2, " ms"),
    )
    report.add(
        "get_order JSON turn p99 (ms), c=1: PostgreSQL (baseline SQLite)",
        f1(pg.ms(99)),
        f1(lite.ms(99)),
        ratio(pg.ms(99), lite.ms(99)),
    )
    c = size.chat_conns
    lite_w, pg_w = results[("sqlite", c)], results[("postgresql", c)]
    report.add(
        f"create_order turns/s, c={c}: PostgreSQL (baseline SQLite)",
        f0(pg_w.rps),
        f0(lite_w.rps),
        ratio(pg_w.rps, lite_w.rps),
    )
    report.add(
        f"create_order turn p50 (ms), c={c}: PostgreSQL (baseline SQLite)",
        f1(pg_w.ms(50)),
        f1(lite_w.ms(50)),
        ratio(pg_w.ms(50), lite_w.ms(50)),
    )
    for (engine, conns), values in sorted(cpu.items()):
        report.cpu.append(f"orders-db {engine}, concurrency {conns}: {f0(sum(values) / len(values))}%")
    errors = {f"{e} c{c}": r.errors for (e, c), r in results.items() if r.errors}
    if errors:
        report.notes.append(f"orders-db errors: {errors}")
    say(
        f"  orders-db: get_order p50 sqlite {f1(lite.ms(50))} ms, postgresql {f1(pg.ms(50))} ms,"
        f" paired difference +{f1(added)} ms"
    )
