"""GET /metrics: scraped and parsed with prometheus_client's own text parser, against the real app."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.mail.render import render_message
from msev15.metrics import Metrics, _mark_dead_workers, _run_dir
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import MakeModelSettings, make_settings
from tests.helpers import eventually, eventually_sync, free_port
from tests.mcp_fixtures import McpProcess, make_orders_db, running_mcp
from tests.openai_server import ScriptedOpenAI
from tests.scripted_model import Reply, ScriptedModel
from tests.servers import hypercorn_service

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition, keyed by its name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: TestClientProtocol) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(await response.get_data(as_text=True))


async def test_a_chat_and_a_tool_failure_move_the_counters(tmp_path: Path) -> None:
    model = ScriptedModel(
        Reply.call("get_order", {"order_id": "ORD-NOPE", "customer_email": "who@example.com"}),
        Reply.call("made_up_tool", {}),
        Reply.say("Sorry, I could not find that order."),
    )
    app = create_app(make_settings(tmp_path), model=model)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        before = await scrape(client)
        response = await client.post(
            "/api/v1/chat", json={"message": "Where is ORD-NOPE? I am who@example.com", "session_id": "s-42"}
        )
        assert response.status_code == 200
        history = await client.get("/api/v1/sessions/s-42/history")
        assert history.status_code == 200
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("msev15_http_requests_total", route="/api/v1/chat", method="POST", status="200") == 1
    route = "/api/v1/sessions/<session_id>/history"  # the template, never the session's id
    assert moved("msev15_http_requests_total", route=route, method="GET", status="200") == 1
    assert moved("msev15_http_request_duration_seconds_count", route="/api/v1/chat", method="POST") == 1
    assert moved("msev15_turns_total", outcome="ok") == 1
    assert moved("msev15_first_token_seconds_count") == 1
    assert moved("msev15_model_requests_total", provider="scripted") == 3
    assert moved("msev15_tool_calls_total", tool="get_order", result="refused") == 1
    assert moved("msev15_tool_calls_total", tool="unknown", result="invalid") == 1  # a made-up name
    for (_, labels), _ in after.items():
        for _, shown in labels:
            assert "s-42" not in shown and "@" not in shown and "ORD-" not in shown and "default" != shown


@pytest.fixture
def mcp_server(tmp_path: Path) -> Iterator[McpProcess]:
    with running_mcp(make_orders_db(tmp_path / "shop.db")) as server:
        yield server


async def test_the_mcp_gauge_follows_an_outage(tmp_path: Path, mcp_server: McpProcess) -> None:
    app = create_app(make_settings(tmp_path, mcp_server_url=mcp_server.url))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert value(await scrape(client), "msev15_mcp_connected") == 1
        await asyncio.to_thread(mcp_server.kill)

        async def disconnected() -> bool:
            return value(await scrape(client), "msev15_mcp_connected") == 0

        await eventually(disconnected, within=10, what="msev15_mcp_connected at 0 after the outage")
        await asyncio.to_thread(mcp_server.start)

        async def back() -> bool:
            return value(await scrape(client), "msev15_mcp_connected") == 1

        await eventually(back, within=10, what="msev15_mcp_connected at 1 again")


async def test_model_retries_errors_and_the_outbox_backlog(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    openai_server.push(Reply.error(503), Reply.say("Hello there."))
    app = create_app(make_model_settings())
    async with app.test_app() as test_app:
        client = test_app.test_client()
        before = await scrape(client)
        response = await client.post("/api/v1/chat", json={"message": "hi", "session_id": "s-1"})
        assert response.status_code == 200
        found: Services = test_app.app.extensions[EXTENSION_KEY]  # type: ignore[attr-defined]
        assert found.mailer is not None
        await found.mailer.enqueue("default", "who@example.com", render_message("Hi", "Body", "Support"))
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("msev15_model_requests_total", provider="openai") == 1
    assert moved("msev15_model_retries_total", provider="openai") == 1
    assert moved("msev15_model_errors_total", provider="openai", kind="http_503") == 1
    assert value(after, "msev15_outbox_messages", state="undelivered") == 1  # no SMTP server: kept
    assert value(after, "msev15_outbox_messages", state="queued") == 0


async def test_metrics_needs_no_key_is_not_rate_limited_and_can_be_off(tmp_path: Path) -> None:
    app = create_app(
        make_settings(tmp_path, api_keys="k-1:tenant-a", enable_rate_limiting=True, rate_limit_per_minute=1)
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(3):
            assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/api/v1/sessions")).status_code == 401  # the API still wants its key

    off = create_app(make_settings(tmp_path / "off", enable_metrics=False))
    async with off.test_app() as test_app:
        response = await test_app.test_client().get("/metrics")
        assert response.status_code == 404
        assert (await response.get_json())["error"]["type"] == "not_found"


def test_recording_is_cheap_on_the_hot_path() -> None:
    """The cached children make one record a dict lookup and an add: far below a millisecond."""
    recorded = Metrics()
    recorded.http("/health", "GET", 200, 0.001)
    recorded.turn("ok")
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        recorded.http("/health", "GET", 200, 0.001)
        recorded.turn("ok")
        recorded.tool("get_order_status", "ok")
    per_round = (time.perf_counter() - started) / rounds
    assert per_round < 50e-6, f"{per_round * 1e6:.1f} µs per request's worth of recording"


# Several workers ------------------------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The real service under `hypercorn -w 2`; yields its URL and the Hypercorn parent's pid."""
    port = free_port()
    config = tmp_path / "hypercorn.toml"
    config.write_text(f'bind = ["127.0.0.1:{port}"]\nworkers = 2\n')
    env = {
        **os.environ,
        "ORDER_DB_PATH": str(tmp_path / "orders.db"),
        "SESSION_STORE": "sqlite",
        "SESSION_DB_PATH": str(tmp_path / "sessions.db"),
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "LOG_TO_FILE": "false",
        "LOG_LEVEL": "ERROR",
        "LLM_PROVIDER": "offline",
        "MCP_SERVER_URL": "http://127.0.0.1:9/mcp",
        "MCP_AUTOSTART": "false",
        "ENABLE_RATE_LIMITING": "false",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    url = f"http://127.0.0.1:{port}"
    with hypercorn_service(url, ["--config", str(config)], env, path="/health/liveness") as process:
        parent = process.pid
        yield url, parent
    for run in _run_dirs(parent):  # the stopped workers' metric files
        shutil.rmtree(run, ignore_errors=True)


def _run_dirs(parent: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"msev15-metrics-{os.getuid()}-{parent}-*"))


def _worker_pids(parent: int) -> set[str]:
    pids: set[str] = set()
    for run in _run_dirs(parent):
        for file in run.glob("counter_*.db"):
            pids.add(file.stem.rsplit("_", 1)[1])
    return pids


def test_counts_add_up_across_two_workers(two_workers: tuple[str, int]) -> None:
    url, parent = two_workers
    sent = 0

    def both_workers_served() -> bool:
        nonlocal sent
        for _ in range(10):  # fresh connections: the kernel hands them to either worker
            with httpx.Client(base_url=url, timeout=5) as fresh:
                assert fresh.get("/health").status_code == 200
            sent += 1
        return len(_worker_pids(parent)) == 2

    eventually_sync(both_workers_served, within=30, interval=0.0, what="both workers answering /health")
    for _ in range(6):  # each scrape lands on either worker; every one of them sees the whole count
        with httpx.Client(base_url=url, timeout=5) as fresh:
            samples = parse(fresh.get("/metrics").text)
        assert (
            value(samples, "msev15_http_requests_total", route="/health", method="GET", status="200") == sent
        )


def test_a_run_directory_per_parent_and_the_dead_runs_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603 - a pid that is surely gone
    dead.wait()
    stale = tmp_path / f"msev15-metrics-{os.getuid()}-{dead.pid}-123"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    mine = _run_dir(tmp_path)
    assert mine.name.startswith(f"msev15-metrics-{os.getuid()}-{os.getppid()}-")
    assert not stale.exists()  # its Hypercorn parent is gone: its counts are another run's
    assert _run_dir(tmp_path) == mine  # every worker of this run agrees on it


def test_the_live_gauges_of_a_dead_worker_are_dropped(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    dead.wait()
    for name in (f"gauge_livesum_{dead.pid}.db", f"counter_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db"):
        (tmp_path / name).write_bytes(b"")
    _mark_dead_workers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"gauge_livesum_{os.getpid()}.db"]  # its counts stay in the sum
    )
