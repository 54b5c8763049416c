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
    """What a running trial offers the runner: the API, and (after it) the shop's state and usage."""

    http: Http
    db_path: Path
    model: CountingModel | None


class InProcessWorld:
    """Builds trial worlds from one demo database made at the start of the run."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.template = folder / "demo.db"
        self.before: ShopState | None = None
        self._count = 0

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
            settings = self.settings.model_copy(
                update={
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
            )
            model = CountingModel(create_model(settings))
            # The service's log lines go to stderr: they never reach a --json report on stdout.
            with contextlib.redirect_stdout(sys.stderr):
                app = create_app(settings, model=model)
            # Quart's test app gives start-up and shutdown 6 s; a busy machine running trials
            # side by side may need longer, and that is no failure of the model.
            async with TestApp(
                app, startup_timeout=STARTUP_SECONDS, shutdown_timeout=STARTUP_SECONDS
            ) as test_app:
                yield Trial(QuartHttp(test_app.test_client()), db, model)


@contextlib.asynccontextmanager
async def serving_catalog(db: Path) -> AsyncIterator[str]:
    """The bundled MCP server reading `db`, served in this process; yields its URL."""
    app: Any = build_server(db).streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1")
    async with serve_on_loopback(app, graceful_timeout=0.5) as port:
        yield f"http://127.0.0.1:{port}{MCP_PATH}"


def state_after(trial: Trial) -> ShopState:
    return read_state(trial.db_path)
