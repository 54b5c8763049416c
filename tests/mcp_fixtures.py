"""The bundled MCP server as a real subprocess on a free 127.0.0.1 port, and an orders database for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from msev15 import ROOT
from msev15.stores.orders import OrderRepository
from tests.helpers import eventually_sync, free_port

STARTUP_SECONDS = 20.0


def make_orders_db(path: Path) -> Path:
    """A seeded orders database, made by the repository itself (its schema, its demo catalog)."""

    async def create() -> None:
        repo = await OrderRepository.open(path, seed=True)
        await repo.close()

    asyncio.run(create())
    return path


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, proc: subprocess.Popen[bytes], within: float = STARTUP_SECONDS) -> None:
    """Poll the TCP port (bounded); fail early if the process died."""

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"MCP server exited with {proc.returncode} before listening")
        return port_open(port)

    eventually_sync(listening, within=within, interval=0.05, what=f"MCP server listening on {port}")


class McpProcess:
    """One `python -m msev15.mcp_server` child; stopped by its own PID only."""

    def __init__(self, db: Path, port: int | None = None, slow_tool: bool = False) -> None:
        self.db = db
        self.port = port or free_port()
        self.slow_tool = slow_tool
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> McpProcess:
        env = os.environ.copy()
        env["PYTHONPATH"] = str(ROOT)
        env["LOG_LEVEL"] = "WARNING"
        module = "tests.slow_mcp_server" if self.slow_tool else "msev15.mcp_server"
        cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [*cmd, "--db", str(self.db)], cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """Sudden death (SIGKILL): no goodbye to connected clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextlib.contextmanager
def running_mcp(db: Path, port: int | None = None, slow_tool: bool = False) -> Iterator[McpProcess]:
    server = McpProcess(db, port, slow_tool).start()
    try:
        yield server
    finally:
        server.stop()
