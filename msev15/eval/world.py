"""A trial's world in process: a fresh copy of the demo database, the catalog server, the real app.

Each trial gets its own temporary folder, its own copy of the demo database (with the task's
product edits), the bundled MCP server reading that copy (served in this process on a free
loopback port), and the service built by `create_app` with outbox-only mail. Nothing is written
outside the temporary folder.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from quart import Quart
from quart.testing import TestApp
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.agent.providers import create_model
from msev15.eval.chat import Http
from msev15.eval.loopback import serve_on_loopback
from msev15.eval.models import CountingModel
from msev15.eval.state import ShopState, copy_database, edit_products, read_state
from msev15.eval.tasks import Task
from msev15.mcp_server.server import MCP_PATH, build_server
from msev15.settings import Settings
from msev15.stores.orders import OrderRepository
from msev15.web.services import EXTENSION_KEY

STARTUP_SECONDS = 60


class QuartHttp:
    """`Http` over the app's test client: the real routes, no sockets."""

    def __init__(self, client: TestClientProtocol) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
        response = await self.client.post(path, json=body, headers=headers)
        return response.status_code, await response.get_data(as_text=True)


@dataclass(slots=True)
class Trial:
    """What a running trial offers the runner: the API, the shop's state before it, and its usage.

    `db_path` is the orders database to compare afterwards (None: the state cannot be read).
    """

    http: Http
    db_path: Path | None
    model: CountingModel | None
    before: ShopState | None
    api_key: str | None = None

    def after(self) -> ShopState | None:
        return read_state(self.db_path) if self.db_path is not None else None


class InProcessWorld:
    """Builds trial worlds from one demo database made at the start of the run."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.template = folder / "demo.db"
        self.before: ShopState | None = None
        self._count = 0

    def cannot_run(self, task: Task) -> str | None:
        return None  # every task's setup can be made in process

    async def prepare(self) -> None:
        repo = await OrderRepository.open(self.template, seed=True)
        await repo.close()
        self.before = read_state(self.template)

    @contextlib.asynccontextmanager
    async def trial(self, task: Task) -> AsyncIterator[Trial]:
        self._count += 1
        folder = self.folder / f"trial-{self._count}"
        folder.mkdir()
        db = folder / "orders.db"
        copy_database(self.template, db)
        edits = {sku: e.model_dump(exclude_none=True) for sku, e in task.setup.products.items()}
        if edits:
            edit_products(db, edits)
        async with contextlib.AsyncExitStack() as stack:
            url = "http://127.0.0.1:9/mcp"  # the discard port: no catalog
            if task.setup.catalog:
                url = await stack.enter_async_context(serving_catalog(db))
            update: dict[str, Any] = {
                "order_db_path": db,
                "session_db_path": folder / "sessions.db",
                "session_store": "memory",
                "outbox_dir": folder / "outbox",
                "smtp_server": None,
                "log_to_file": False,
                "log_level": "ERROR",
                "mcp_server_url": url,
                "mcp_autostart": False,
                "mcp_server_required": False,
                "enable_rate_limiting": False,
                "api_keys": None,
                "client_token_secret": None,
            }
            if "database_url" in Settings.model_fields:  # the trial's orders are its SQLite copy
                update["database_url"] = None
            settings = self.settings.model_copy(update=update)
            model = CountingModel(create_model(settings))
            # The service's log lines go to stderr: they never reach a --json report on stdout.
            with contextlib.redirect_stdout(sys.stderr):
                app = create_app(settings, model=model)
            # Quart's test app gives start-up and shutdown 6 s; a busy machine running trials
            # side by side may need longer, and that is no failure of the model.
            async with TestApp(
                app, startup_timeout=STARTUP_SECONDS, shutdown_timeout=STARTUP_SECONDS
            ) as test_app:
                try:
                    yield Trial(QuartHttp(test_app.test_client()), db, model, self.before)
                finally:
                    await _leave_catalog(app)


async def _leave_catalog(app: Quart) -> None:
    """Close the MCP session from its owner task before the app's shutdown cancels that task.

    Cancelled inside the SDK's session, the task can wait forever on the session's own tasks, and
    the shutdown with it (seen about once in a few hundred trials); a stop asked for is clean.
    """
    found = app.extensions.get(EXTENSION_KEY)
    if found is not None and found.mcp is not None:
        await found.mcp.close()


@contextlib.asynccontextmanager
async def serving_catalog(db: Path) -> AsyncIterator[str]:
    """The bundled MCP server reading `db`, served in this process; yields its URL."""
    app: Any = build_server(db).streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1")
    async with serve_on_loopback(app, graceful_timeout=0.5) as port:
        yield f"http://127.0.0.1:{port}{MCP_PATH}"


class HttpxHttp:
    """`Http` over a real connection to a running service."""

    def __init__(self, client: httpx2.AsyncClient) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
        response = await self.client.post(path, json=body, headers=headers)
        return response.status_code, response.text


class ServiceWorld:
    """Trials against a running service (`--url`), in its own data.

    Its database cannot be copied per trial: with `db` (the service's SQLite orders database,
    read read-only) each trial is compared with the state just before it, one trial at a time;
    without it the orders and mails go unchecked (and say so). Tasks whose setup needs a world of
    their own (product edits, no catalog) cannot run there and are listed as not attempted.
    """

    def __init__(self, url: str, api_key: str | None = None, db: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.db = db
        self.before: ShopState | None = None
        self._client: httpx2.AsyncClient | None = None

    def cannot_run(self, task: Task) -> str | None:
        if task.setup.products or not task.setup.catalog:
            return "its setup needs a world of its own, which a running service cannot give"
        return None

    async def prepare(self) -> None:
        if self.db is not None and not self.db.is_file():
            raise FileNotFoundError(f"--db {self.db}: no such database")
        timeout = httpx2.Timeout(STARTUP_SECONDS * 5, connect=10.0)
        self._client = httpx2.AsyncClient(base_url=self.url, timeout=timeout)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @contextlib.asynccontextmanager
    async def trial(self, task: Task) -> AsyncIterator[Trial]:
        assert self._client is not None, "prepare() first"
        before = read_state(self.db) if self.db is not None else None
        yield Trial(HttpxHttp(self._client), self.db, None, before, self.api_key)
