"""The bundled MCP server as a real subprocess on a free 127.0.0.1 port, and an orders database for it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from msev15 import ROOT
from msev15.stores.orders import OrderRepository

STARTUP_SECONDS = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MCP server exited with {proc.returncode} before listening")
        if port_open(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"MCP server not listening on {port} within {within:g} s")


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


async def wait_until(condition: Callable[[], bool], within: float = 10.0, every: float = 0.05) -> bool:
    """Poll a condition (bounded) instead of sleeping a fixed time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(every)
    return condition()
