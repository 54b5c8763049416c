"""A real `redis-server` (Debian's package) on a free 127.0.0.1 port, in a temp dir, stopped by PID."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.helpers import eventually_sync, free_port, require_binary


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `restart` keeps port and data (AOF, fsync always).

    Made without Debian's redis-server installed, it skips the test (fails it when CI=true).
    """

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        proc = self.proc = subprocess.Popen(  # noqa: S603 - fixed arguments
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            return _pong(self.port)

        try:
            eventually_sync(answering, within=timeout, what=f"redis-server answering PING on {self.port}")
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by PID (Redis flushes its AOF on the way out), then wait for the exit."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
