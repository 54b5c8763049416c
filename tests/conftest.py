"""Shared fixtures: settings in a temp folder, the app, its test client, and the real test servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.settings import Settings, load_settings
from msev15.web.services import EXTENSION_KEY, Services
from tests.engines import ENGINES, Engine, dispose, make_engine
from tests.openai_server import ScriptedOpenAI, running_openai_server
from tests.postgres_server import PostgresServer

# A developer's shell may export these; the suite must not trace to their collector or switch this
# process's metrics to multiprocess files (tests that want them set them for their subprocesses).
for _name in (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "PROMETHEUS_MULTIPROC_DIR",
):
    os.environ.pop(_name, None)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings that touch nothing outside tmp_path and call nothing outside loopback."""
    base: dict[str, Any] = {
        "order_db_path": tmp_path / "orders.db",
        "session_db_path": tmp_path / "sessions.db",
        "outbox_dir": tmp_path / "outbox",
        "log_to_file": False,
        "log_level": "WARNING",
        "llm_provider": "offline",
        "mcp_server_url": "http://127.0.0.1:9/mcp",  # nothing listens on the discard port
        "mcp_autostart": False,
        "mcp_reconnect_seconds": 0.2,
        "enable_rate_limiting": False,
        "model_retry_base_seconds": 0.01,
        "smtp_server": None,
        "api_keys": None,
    }
    base.update(overrides)
    return load_settings(_env_file=None, **base)


async def order_status(app: Quart, order_id: str, tenant: str = "default") -> str:
    """The order's status as the database holds it ("absent" when there is no such order)."""
    found: Services = app.extensions[EXTENSION_KEY]
    assert found.orders is not None
    async with found.orders.reading() as db:
        row = await db.fetchone(
            "SELECT status FROM orders WHERE tenant_id = ? AND id = ?", (tenant, order_id)
        )
    return str(row[0]) if row else "absent"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Quart]:
    application = create_app(settings)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.fixture
def client(app: Quart) -> TestClientProtocol:
    return app.test_client()


@pytest.fixture
async def openai_server() -> AsyncIterator[ScriptedOpenAI]:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 playing scripted replies."""
    async with running_openai_server() as server:
        yield server


MakeModelSettings = Callable[..., Settings]


@pytest.fixture
def make_model_settings(tmp_path: Path, openai_server: ScriptedOpenAI) -> MakeModelSettings:
    """`(**overrides) -> Settings`: the real `openai` client pointed at the scripted server, plus overrides.

    The one place the scripted-model settings are spelled out; `model_settings` is this with no overrides.
    """

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "llm_provider": "auto",
            "openai_base_url": openai_server.base_url,
            "openai_api_key": "test-key",
            "model_timeout_seconds": 2.0,
            "model_max_retries": 2,
        }
        return make_settings(tmp_path, **{**base, **overrides})

    return make


@pytest.fixture
def model_settings(make_model_settings: MakeModelSettings) -> Settings:
    """Settings pointing the real `openai` client at the scripted server."""
    return make_model_settings()


@pytest.fixture
async def model_app(model_settings: Settings) -> AsyncIterator[Quart]:
    application = create_app(model_settings)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


@pytest.fixture
def model_client(model_app: Quart) -> TestClientProtocol:
    return model_app.test_client()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the whole session (initdb + pg_ctl, loopback only)."""
    with PostgresServer.running() as server:
        yield server


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    """The test's database on SQLite, then on PostgreSQL (tests/engines.py)."""
    made = make_engine(request, tmp_path)
    yield made
    await dispose(made)
