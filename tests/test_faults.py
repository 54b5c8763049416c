"""Faults the service must survive: a locked order database and a SIGTERM in the middle of a turn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from msev15 import create_app
from msev15.stores.orders import OrderRepository
from msev15.stores.sessions.sqlite import SqliteSessionStore
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolContext, ToolRegistry
from tests.conftest import MakeModelSettings, make_settings
from tests.helpers import eventually, free_port
from tests.openai_server import Reply, ScriptedOpenAI, running_openai_server

ROOT = Path(__file__).resolve().parent.parent
ALICE = "alice@example.com"
BUSY = "the order database is busy, please try again"
CANCEL = {"order_id": "ORD-1001", "customer_email": ALICE, "reason": "changed my mind"}


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's writer: holds SQLite's write lock on the file until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


# SQLite busy or locked -----------------------------------------------------------------------


async def test_locked_database_gives_a_bounded_busy_refusal_then_works(tmp_path: Path) -> None:
    repo = await OrderRepository.open(tmp_path / "orders.db", seed=True, busy_timeout_ms=150)
    tools = ToolRegistry(default_timeout=10.0)
    tools.register_all(order_tools(repo))
    ctx = ToolContext("default", "s", "r")
    try:
        with write_locked(tmp_path / "orders.db"):
            started = time.monotonic()
            result = await tools.call("cancel_order", CANCEL, ctx)
            waited = time.monotonic() - started
            assert (result.ok, result.error) == (False, BUSY)
            assert 0.1 <= waited < 5  # it waited for the lock, then gave up instead of hanging
            # WAL readers are not blocked by the writer, and nothing was changed.
            order = await repo.get_order("default", "ORD-1001", ALICE)
            assert order["status"] == "pending"
        # The connection is left clean (no half-open transaction): the same call now works.
        again = await tools.call("cancel_order", CANCEL, ctx)
        assert again.ok, again.error
        assert (await repo.get_order("default", "ORD-1001", ALICE))["status"] == "cancelled"
    finally:
        await repo.close()


async def test_locked_database_through_the_api_is_a_refusal_not_a_500(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = make_model_settings(
        model_timeout_seconds=5.0, require_confirmation=False, db_busy_timeout_ms=150
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        openai_server.push(Reply.call("cancel_order", CANCEL), Reply.say("The system is busy."))
        with write_locked(settings.order_db_path):
            response = await client.post("/api/v1/chat", json={"session_id": "b", "message": "cancel"})
            body = await response.get_json()
        assert response.status_code == 200, body
        assert body["tool_calls"][0]["ok"] is False
        assert orjson.loads(openai_server.requests[1]["messages"][-1]["content"]) == {
            "ok": False,
            "error": BUSY,
        }
        openai_server.push(Reply.call("cancel_order", CANCEL), Reply.say("Cancelled."))
        response = await client.post("/api/v1/chat", json={"session_id": "b", "message": "try again"})
        body = await response.get_json()
        assert response.status_code == 200 and body["tool_calls"][0]["ok"] is True, body
        assert body["message_count"] == 4


# Model faults: after each, the session is well-formed and the next turn works ------------------

MODEL_FAULTS = {
    "429 until retries run out": [Reply.error(429, times=-1)],
    "500 until retries run out": [Reply.error(500, times=-1)],
    "hangs past the timeout": [Reply(text="late", hang=2.0, times=-1)],
    "dies after a tool ran": [
        Reply.call("get_order", {"order_id": "ORD-1001", "customer_email": ALICE}),
        Reply.error(500, times=-1),
    ],
}


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
async def test_model_fault_leaves_the_session_consistent(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, fault: str
) -> None:
    settings = make_model_settings(model_timeout_seconds=0.3, model_max_retries=1)
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        openai_server.push(Reply.say("Hello!"))
        first = await client.post("/api/v1/chat", json={"session_id": "f", "message": "hi"})
        assert first.status_code == 200

        openai_server.push(*MODEL_FAULTS[fault])
        response = await client.post(
            "/api/v1/chat", json={"session_id": "f", "message": "where is ORD-1001?"}
        )
        body = await response.get_json()
        assert response.status_code == 503 and body["error"]["type"] == "unavailable", body

        history = await (await client.get("/api/v1/sessions/f/history")).get_json()
        roles = [m["role"] for m in history["messages"]]
        assert roles in (["user", "assistant"], ["user", "assistant", "user", "assistant"]), roles
        if len(roles) == 4:  # something happened (a tool ran): kept, and marked as cut short
            assert history["messages"][3]["interrupted"] is True
            assert history["messages"][3]["tool_calls"][0]["name"] == "get_order"

        openai_server.script.clear()
        openai_server.requests.clear()
        openai_server.push(Reply.say("Back again."))
        again = await client.post("/api/v1/chat", json={"session_id": "f", "message": "still there?"})
        body = await again.get_json()
        assert again.status_code == 200 and body["message"] == "Back again."
        assert body["message_count"] == len(roles) + 2
        sent = [m["role"] for m in openai_server.requests[0]["messages"]]
        # Every earlier turn whole: the tool that ran goes back with its call, then the (cut) answer.
        cut = ["user", "assistant", "tool", "assistant"] if len(roles) == 4 else []
        assert sent == ["system", "user", "assistant", *cut, "user"]  # no dangling or duplicated turn


# Graceful shutdown on SIGTERM -----------------------------------------------------------------

WORDS = [f"w{i}" for i in range(1, 31)]  # 30 tokens 0.1 s apart: about 3 s of answer in flight


def _command(form: str, port: int) -> list[str]:
    if form == "hypercorn":  # the production form: a supervisor process and one worker
        return [
            sys.executable,
            "-m",
            "hypercorn",
            "--config",
            "hypercorn.toml",
            "--bind",
            f"127.0.0.1:{port}",
            "app:app",
        ]
    return [sys.executable, "app.py"]  # all in one: msev15.runner serves in this process


def _spawn(form: str, env: dict[str, str], log_path: Path, port: int) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(  # noqa: S603 - our own app, fixed arguments
            _command(form, port),
            cwd=ROOT,
            env={**os.environ, **env, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_service(
    form: str, env: dict[str, str], log_path: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """The real service in a subprocess, killed if a test fails."""
    port = free_port()
    process = _spawn(form, env, log_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def healthy() -> bool:
                if process.poll() is not None:
                    pytest.fail(f"the service did not start (exit {process.returncode}):\n{_log(log_path)}")
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get(f"{url}/health")).status_code == 200
                return False

            try:
                await eventually(healthy, within=60, interval=0.1, what="the service answering /health")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_log(log_path)}") from None
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)


async def _read_stream(
    url: str, body: dict[str, Any], events: list[dict[str, Any]], first: asyncio.Event
) -> None:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as client,
        client.stream("POST", f"{url}/api/v1/chat/stream", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
                if events[-1]["type"] == "token":
                    first.set()


async def _served(url: str) -> bool:
    """Whether a brand-new connection gets an answer (a queued-but-never-accepted one times out)."""
    try:
        async with httpx.AsyncClient(timeout=0.5) as client:
            await client.get(f"{url}/health")
    except httpx.TransportError:
        return False
    return True


@pytest.mark.parametrize("form", ["hypercorn", "python app.py"])
async def test_sigterm_lets_the_turn_in_flight_finish_and_loses_nothing(tmp_path: Path, form: str) -> None:
    sessions_db, orders_db, log_path = (
        tmp_path / "sessions.db",
        tmp_path / "orders.db",
        tmp_path / "service.log",
    )
    async with running_openai_server() as model:
        model.push(
            Reply.call("send_order_confirmation", {"order_id": "ORD-1001", "customer_email": ALICE}),
            Reply.say(" ".join(WORDS), delay=0.1),
        )
        env = {
            "ORDER_DB_PATH": str(orders_db),
            "SESSION_STORE": "sqlite",
            "SESSION_DB_PATH": str(sessions_db),
            "OUTBOX_DIR": str(tmp_path / "outbox"),
            "LOG_TO_FILE": "false",
            "LOG_LEVEL": "WARNING",
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_API_KEY": "test-key",
            "REQUIRE_CONFIRMATION": "false",
            "MCP_SERVER_URL": "http://127.0.0.1:9/mcp",
            "MCP_AUTOSTART": "false",
            "ENABLE_RATE_LIMITING": "false",
            # SMTP is down: the confirmation stays queued in the outbox, and must survive the shutdown.
            "SMTP_SERVER": "127.0.0.1",
            "SMTP_PORT": str(free_port()),
            "SMTP_USE_TLS": "false",
        }
        async with running_service(form, env, log_path) as (process, url):
            events: list[dict[str, Any]] = []
            first = asyncio.Event()
            body = {"session_id": "shut:1", "message": "email me my order ORD-1001"}
            reader = asyncio.create_task(_read_stream(url, body, events, first))
            await asyncio.wait_for(first.wait(), timeout=30)

            process.send_signal(signal.SIGTERM)

            async def refused() -> bool:  # shutdown started: new connections are no longer served
                return not await _served(url)

            await eventually(refused, within=15, interval=0.05, what="new connections refused after SIGTERM")
            assert not reader.done(), "the turn ended before shutdown was observed; lengthen WORDS"

            await asyncio.wait_for(reader, timeout=30)  # graceful_timeout in hypercorn.toml is 30 s
            returncode = await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=30)
            assert returncode == 0, _log(log_path)

    types = [e["type"] for e in events]
    assert types[:2] == ["tool_call", "tool_result"] and events[1]["ok"] is True, events[:2]
    assert types[-1] == "done" and "error" not in types, _log(log_path)
    assert events[-1]["message"] == " ".join(WORDS)

    # The complete turn is in the session file, as a fresh process would read it.
    store = await SqliteSessionStore.open(sessions_db)
    try:
        session = await store.get("default", "shut:1")
    finally:
        await store.close()
    assert session is not None
    assert [(m.role, m.content) for m in session.messages] == [
        ("user", body["message"]),
        ("assistant", " ".join(WORDS)),
    ]
    assert not session.messages[1].interrupted
    assert [c["name"] for c in session.messages[1].tool_calls or []] == ["send_order_confirmation"]

    # The undeliverable mail is still queued for the next start.
    with contextlib.closing(sqlite3.connect(orders_db)) as db:
        rows = db.execute("SELECT recipient, status FROM outbox").fetchall()
    assert rows == [(ALICE, "queued")]


async def test_instances_starting_together_on_new_databases_all_come_up(tmp_path: Path) -> None:
    """Workers of one host open the same new files at once: none may fail on "database is locked"."""

    async def start(folder: Path) -> None:
        app = create_app(make_settings(folder, session_store="sqlite"))
        async with app.test_app():
            assert (await app.test_client().get("/health/readiness")).status_code == 200

    for attempt in range(12):  # the race is timing-dependent: several fresh starts make it show
        folder = tmp_path / f"start-{attempt}"
        await asyncio.gather(start(folder), start(folder), start(folder))
