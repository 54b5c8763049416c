"""Prometheus metrics: what an operator asks of the service without reading its logs.

The metrics of one process live in one `Metrics` object, built once per process: Prometheus
metrics are process-wide by nature (the scraper sees the process, or with several Hypercorn
workers, their sum), so this is the one deliberate module-level singleton of the service.
Every layer records through `metrics()` without knowing the web stack.

Labels never hold a tenant, session, user, email or raw path: routes are templates, tool names
come from the registry (anything else is `unknown`), outcomes and kinds are short fixed words.
The hot paths (one HTTP request, one turn, one tool call) use label children cached here, so
recording is a dict lookup and an add; nothing is recorded per token.

With several workers (`hypercorn -w N`, or `workers` in hypercorn.toml), each worker writes its
values to files in a directory shared by the run (PROMETHEUS_MULTIPROC_DIR, or one made per run
under the temp folder), and `/metrics` sums them: counts add up across workers, gauges of
workers that are gone are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import multiprocess as mp
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RUN_DIR_PREFIX = "msev15-metrics-"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Latency buckets in seconds: HTTP answers are milliseconds, a first token is tens to thousands.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric of the service, with the label children of the hot paths cached."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        # Long by design: every metric is declared here once, with its labels and help text.
        self.multiprocess_dir = multiprocess_dir
        # Multiprocess values are files, collected at scrape time; nothing is registered then.
        self.registry: CollectorRegistry | None = None if multiprocess_dir else CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter(
            "msev15_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=reg,
        )
        self.http_duration = Histogram(
            "msev15_http_request_duration_seconds",
            "Time to the response's start (headers), by route template and method.",
            ("route", "method"),
            buckets=_HTTP_BUCKETS,
            registry=reg,
        )
        self.turns = Counter(
            "msev15_turns",
            "Chat turns that ended, by outcome (ok, cancelled, refused, or the error code).",
            ("outcome",),
            registry=reg,
        )
        self.first_token = Histogram(
            "msev15_first_token_seconds",
            "Time from the start of a turn to its first streamed text.",
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=reg,
        )
        self.tool_calls = Counter(
            "msev15_tool_calls",
            "Tool calls, by tool and result (ok, refused, invalid, error, unavailable, crashed).",
            ("tool", "result"),
            registry=reg,
        )
        self.model_requests = Counter(
            "msev15_model_requests",
            "Model calls (one per round of a turn), by provider.",
            ("provider",),
            registry=reg,
        )
        self.model_retries = Counter(
            "msev15_model_retries",
            "Model calls retried after a failure, by provider.",
            ("provider",),
            registry=reg,
        )
        self.model_errors = Counter(
            "msev15_model_errors",
            "Failed model attempts, by provider and kind (timeout, unreachable, http_5xx, auth, ...).",
            ("provider", "kind"),
            registry=reg,
        )
        self.open_streams = Gauge(
            "msev15_open_streams",
            "Open streaming connections, by transport (sse, websocket).",
            ("transport",),
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.outbox = Gauge(
            "msev15_outbox_messages",
            "Mails in the outbox, by state (queued, delivered, undelivered, failed); read at scrape time.",
            ("state",),
            multiprocess_mode="livemostrecent",
            registry=reg,
        )
        self.mcp_connected = Gauge(
            "msev15_mcp_connected",
            "1 when the MCP server is connected (with several workers: every live worker is).",
            multiprocess_mode="livemin",
            registry=reg,
        )
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._turns: dict[str, Any] = {}
        self._tools: dict[tuple[str, str], Any] = {}
        self._model: dict[str, tuple[Any, Any]] = {}
        self._model_errors: dict[tuple[str, str], Any] = {}
        self.sse = self.open_streams.labels(transport="sse")
        self.websockets = self.open_streams.labels(transport="websocket")

    # Recording (hot paths: one cached child per label combination) ------------------------

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            shown = method if method in _METHODS else "OTHER"
            children = (
                self.http_requests.labels(route=route, method=shown, status=str(status)),
                self.http_duration.labels(route=route, method=shown),
            )
            self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def turn(self, outcome: str) -> None:
        child = self._turns.get(outcome)
        if child is None:
            child = self._turns[outcome] = self.turns.labels(outcome=outcome)
        child.inc()

    def tool(self, tool: str, result: str) -> None:
        key = (tool, result)
        child = self._tools.get(key)
        if child is None:
            child = self._tools[key] = self.tool_calls.labels(tool=tool, result=result)
        child.inc()

    def model_request(self, provider: str) -> None:
        self._model_children(provider)[0].inc()

    def model_retry(self, provider: str) -> None:
        self._model_children(provider)[1].inc()

    def model_error(self, provider: str, kind: str) -> None:
        key = (provider, kind)
        child = self._model_errors.get(key)
        if child is None:
            child = self._model_errors[key] = self.model_errors.labels(provider=provider, kind=kind)
        child.inc()

    def _model_children(self, provider: str) -> tuple[Any, Any]:
        children = self._model.get(provider)
        if children is None:
            children = self._model[provider] = (
                self.model_requests.labels(provider=provider),
                self.model_retries.labels(provider=provider),
            )
        return children

    def outbox_counts(self, counts: dict[str, int]) -> None:
        for state in ("queued", "delivered", "undelivered", "failed"):
            self.outbox.labels(state=state).set(counts.get(state, 0))

    # Exposition -------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format; with several workers, the sum over the run's files."""
        if self.multiprocess_dir is None:
            assert self.registry is not None
            return generate_latest(self.registry)
        _mark_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is leaving: its live gauges go with it (its counts stay in the sum)."""
        if self.multiprocess_dir is not None:
            mp.mark_process_dead(os.getpid(), str(self.multiprocess_dir))  # type: ignore[no-untyped-call]


_current: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics (single-process until `configure_metrics` says otherwise)."""
    global _current
    if _current is None:
        _current = Metrics()
    return _current


def configure_metrics(workers: int, environ: dict[str, str] | None = None) -> Metrics:
    """Pick the mode before anything records: files shared by the run when there are several workers.

    PROMETHEUS_MULTIPROC_DIR, when set, is used as it is (the operator empties it between runs).
    Otherwise, with workers > 1, each run gets its own directory under the temp folder, named
    after the Hypercorn parent process (every worker of a run shares it), and the directories of
    runs whose parent is gone are removed.
    """
    global _current
    env = os.environ if environ is None else environ
    chosen = env.get(MULTIPROC_ENV)
    if not chosen and workers > 1:
        chosen = str(_run_dir())
        env[MULTIPROC_ENV] = chosen  # the library reads it too (mark_process_dead, child processes)
    if not chosen:
        return metrics()
    path = Path(chosen)
    if _current is not None and _current.multiprocess_dir == path:
        return _current
    path.mkdir(parents=True, exist_ok=True)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # made from here on: files
    _mark_dead_workers(path)
    _current = Metrics(path)
    log.info("metrics: multiprocess mode, %s", path)
    return _current


def _run_dir(base: Path | None = None) -> Path:
    """This run's directory: the Hypercorn parent's pid and start time, so a reused pid is a new run."""
    base = Path(tempfile.gettempdir()) if base is None else base
    parent = os.getppid()
    path = base / f"{_RUN_DIR_PREFIX}{os.getuid()}-{parent}-{_start_time(parent)}"
    for old in base.glob(f"{_RUN_DIR_PREFIX}{os.getuid()}-*"):
        pid = old.name.removeprefix(f"{_RUN_DIR_PREFIX}{os.getuid()}-").split("-", 1)[0]
        if old != path and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return path


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux); "0" where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_dead_workers(path: Path) -> None:
    """Drop the live gauges of workers that exited without saying so (killed, crashed)."""
    pids: set[int] = set()
    for file in path.glob("gauge_live*_*.db"):
        digits = file.stem.rsplit("_", 1)[1]
        if digits.isdigit():
            pids.add(int(digits))
    for pid in pids:
        if not _alive(pid):
            with contextlib.suppress(OSError):
                mp.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
