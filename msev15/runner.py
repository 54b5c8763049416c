"""`python app.py`: the API under Hypercorn, plus the bundled MCP server as a child process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from contextlib import suppress
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from msev15.settings import DEFAULT_MCP_URL, ROOT, load_settings
from msev15.web.services import EXTENSION_KEY

log = logging.getLogger(__name__)


def hypercorn_config(host: str, port: int) -> Config:
    """hypercorn.toml's settings with the bind taken from SERVER_HOST/SERVER_PORT."""
    toml = ROOT / "hypercorn.toml"
    config = Config.from_toml(str(toml)) if toml.exists() else Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    return config


def _start_mcp_child() -> subprocess.Popen[bytes] | None:
    settings = load_settings()
    if settings.mcp_server_url != DEFAULT_MCP_URL or not settings.mcp_autostart:
        return None
    try:
        child = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "msev15.mcp_server", "--host", "127.0.0.1", "--port", "8000"],
            cwd=str(ROOT),
            env=os.environ.copy(),
        )
    except OSError as exc:
        log.warning("could not start the bundled MCP server: %s", exc)
        return None
    log.info("bundled MCP server started as pid %d", child.pid)
    return child


def _stop_child(child: subprocess.Popen[bytes] | None) -> None:
    if child is None or child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(app: Quart) -> None:
    settings = load_settings()
    config = hypercorn_config(settings.server_host, settings.server_port)
    child = _start_mcp_child()
    try:
        asyncio.run(_serve(app, config))
    finally:
        _stop_child(child)


async def _serve(app: Quart, config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def begin_shutdown() -> None:
        found = app.extensions.get(EXTENSION_KEY)
        if found is not None:  # readiness says `draining` at once, before Hypercorn stops listening
            found.draining = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, begin_shutdown)
    app_any: Any = app
    await serve(app_any, config, shutdown_trigger=stop.wait)
