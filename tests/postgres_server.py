"""A real PostgreSQL (Debian's `postgresql`): initdb + pg_ctl in a temp dir, a free 127.0.0.1 port.

Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin. PostgreSQL refuses
to run as root, so as root the cluster belongs to the `postgres` user and its commands run through
`runuser`. The server is stopped by the PID in its postmaster.pid.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import eventually_sync, free_port, require_binary

PACKAGE = "postgresql"
DEFAULT_BIN = Path("/usr/lib/postgresql/15/bin")


def server_bin_dir() -> Path:
    """The newest installed server's bin folder (the default path when none is installed)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else DEFAULT_BIN


def _scratch() -> str | None:
    """RAM (/dev/shm) when it has room: a throwaway cluster needs no disk, and cloning is faster.

    A container's /dev/shm is often 64 MiB, too small for a cluster and its test databases: then
    the system's temp folder.
    """
    shm = Path("/dev/shm")
    try:
        roomy = shutil.disk_usage(shm).free >= 1 << 30
    except OSError:
        return None
    return str(shm) if roomy and os.access(shm, os.W_OK) else None


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class PostgresServer:
    """One throwaway cluster; `stop` then `start` keeps port and data (a database that went away).

    Made without Debian's postgresql installed, it skips the test (fails it when CI=true).
    """

    def __init__(self, workdir: Path | None = None) -> None:
        bin_dir = server_bin_dir()
        self.pg_ctl = require_binary(bin_dir / "pg_ctl", PACKAGE)
        self.initdb = require_binary(bin_dir / "initdb", PACKAGE)
        self.dir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="msev15-pg-", dir=_scratch()))
        )
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database_name(self) -> str:
        return f"t{os.getpid()}_{next(self._names)}"

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb into the temp folder (owned by `postgres` when running as root)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self, timeout: float = 20.0) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        try:
            eventually_sync(lambda: _accepting(self.port), within=timeout, what=f"PostgreSQL on {self.port}")
        except AssertionError:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT by PID (PostgreSQL's fast shutdown: sessions are cut), then wait for the exit."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        try:
            eventually_sync(gone, within=timeout, what=f"PostgreSQL {pid} exiting")
        except AssertionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            eventually_sync(gone, within=5.0, what=f"PostgreSQL {pid} killed")

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[PostgresServer]:
        """A new cluster, initialised and started; removed (stopped by PID) afterwards."""
        server = cls()
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.remove()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
