"""What every part of the benchmark shares: its processes (started, pinned, stopped by PID) and
how a figure is written.

Every process is started in its own process group and stopped by PID (SIGTERM to the group,
SIGKILL after 10 s), also on error and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1
# Settings a developer's shell may hold that would change what is measured.
_SCRUB = {
    "API_KEYS",
    "SMTP_SERVER",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_AI_PROJECT_ENDPOINT",
    "SESSION_STORE",
    "REDIS_URL",
    "REDIS_MAX_CONNECTIONS",
    "SESSION_STORE_WAIT_SECONDS",
    "RESUME_BUFFER_SECONDS",
    "WEB_CONCURRENCY",
    "ENABLE_METRICS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "PROMETHEUS_MULTIPROC_DIR",
}

Cpus = int | Iterable[int] | None  # one CPU, a set of them, or None: wherever the scheduler likes


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def all_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) | set(range(os.cpu_count() or 1))


def cpu_set(cpus: Cpus) -> set[int]:
    if cpus is None:
        return all_cpus()
    return {cpus} if isinstance(cpus, int) else set(cpus)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def worker_pids(self) -> list[int]:
        """Hypercorn's spawned workers (the children running the app); without any, the process itself."""
        workers = []
        # multiprocessing may add a resource tracker next to the workers: only spawned ones count
        for child in _children(self.pid):
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing.spawn" in cmd or b"spawn_main" in cmd:
                workers.append(child)
        return workers or [self.pid]

    def worker_pid(self) -> int:
        """The first worker: with workers = 1, the one process that serves."""
        return self.worker_pids()[0]

    def rss_mib(self) -> float:
        """Resident memory of the serving processes together (each worker has its own)."""
        return sum(rss_mib(pid) for pid in self.worker_pids())


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            raw = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            found.extend(int(x) for x in raw)
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Fleet:
    """Every process this run started, stopped by PID (their own process groups) at the end."""

    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.pin = pin
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        port: int,
        cpu: Cpus,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        cpus = cpu_set(cpu) if self.pin else None

        def _pin() -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with log.open("wb") as out:
            popen = subprocess.Popen(  # noqa: S603 - our own fixed commands
                argv,
                cwd=str(cwd),
                env={**{k: v for k, v in os.environ.items() if k not in _SCRUB}, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pin,  # noqa: PLW1509 - affinity only, no locks involved
            )
        proc = Proc(name, popen, port, log)
        self.procs.append(proc)
        return proc

    def stop(self, procs: Iterable[Proc]) -> None:
        """Stop these (by PID, their process groups) and forget them."""
        chosen = list(procs)
        for proc in reversed(chosen):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(chosen):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
            # the group may hold a straggler (a hypercorn worker) after its leader exited
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs = [p for p in self.procs if p not in chosen]

    def stop_all(self) -> None:
        self.stop(list(self.procs))


def wait_http(proc: Proc, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{proc.port}{path}"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    tail = proc.log.read_text(errors="replace")[-3000:] if proc.log.exists() else ""
    raise RuntimeError(f"{proc.name} did not come up on port {proc.port}:\n{tail}")


def hypercorn_argv(target: str, port: int, workers: int = 1) -> list[str]:
    argv = [PYTHON, "-m", "hypercorn", "--config", str(ROOT / "hypercorn.toml")]
    if workers != 1:
        argv += ["--workers", str(workers)]
    return [*argv, "--bind", f"127.0.0.1:{port}", target]


def service_env(model_port: int, workdir: Path, tag: str, store: str = "memory") -> dict[str, str]:
    return {
        "LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
        "OPENAI_API_KEY": "bench",
        "ENABLE_RATE_LIMITING": "false",
        "LOG_LEVEL": "WARNING",
        "LOG_TO_FILE": "false",
        "MCP_AUTOSTART": "false",
        "MCP_SERVER_URL": "http://127.0.0.1:9/mcp",  # nothing listens on the discard port
        "ORDER_DB_PATH": str(workdir / f"orders-{tag}.db"),
        "SESSION_DB_PATH": str(workdir / f"sessions-{tag}.db"),
        "OUTBOX_DIR": str(workdir / f"outbox-{tag}"),
        "SESSION_STORE": store,
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def on_cpu(cpu: Cpus, pin: bool) -> Iterator[None]:
    """Run this (client) process on other CPUs for a while (None: on all of them)."""
    if not pin:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpu_set(cpu))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def set_affinity(procs: Iterable[Proc], cpu: Cpus, pin: bool) -> None:
    """Move running processes (and their workers) to other CPUs."""
    if not pin:
        return
    for proc in procs:
        for pid in {proc.pid, *proc.worker_pids()}:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpu_set(cpu))


class CpuMeter:
    """CPU time of some processes over a wall-clock span (100% = one core)."""

    def __init__(self, pids: int | list[int]) -> None:
        self.pids = [pids] if isinstance(pids, int) else list(pids)
        self.cpu = sum(cpu_seconds(p) for p in self.pids)
        self.wall = time.perf_counter()

    def percent(self) -> float:
        wall = time.perf_counter() - self.wall
        return 100.0 * (sum(cpu_seconds(p) for p in self.pids) - self.cpu) / wall if wall else float("nan")


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# Writing figures ------------------------------------------------------------------------------


def f0(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.0f}"


def f1(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:,.1f}"


def ratio(a: float, b: float) -> str:
    return "n/a" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def at_least(value: float, floor: float, unit: str = "") -> str:
    if math.isnan(value):
        return "missed (no data)"
    if value >= floor:
        return f"met (+{value - floor:,.1f}{unit})"
    return f"**missed** by {floor - value:,.1f}{unit}"


def at_most(value: float, ceiling: float, unit: str = "") -> str:
    if math.isnan(value):
        return "missed (no data)"
    if value <= ceiling:
        return f"met ({ceiling - value:,.1f}{unit} to spare)"
    return f"**missed** by {value - ceiling:,.1f}{unit}"


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)
