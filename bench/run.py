"""Benchmark the service against a bare Quart app on the same Hypercorn settings.

`python bench/run.py [--quick] [--out PATH]`: starts the bare app, the service and the scripted
OpenAI-compatible model server on free 127.0.0.1 ports, runs bounded loads, writes a markdown
table to bench/results/latest.md (and prints it), and stops everything it started, even on
error or Ctrl-C. The service and the baseline are pinned to CPU 0 ("one worker, one core", as
the bars are stated); the load client and the model servers share CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import loadgen, orders_db, resume  # noqa: E402 - needs the repository root on sys.path first
from bench.common import (  # noqa: E402
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    CpuMeter,
    Fleet,
    Proc,
    at_least,
    at_most,
    f0,
    f1,
    free_port,
    hypercorn_argv,
    load_average,
    on_cpu,
    ratio,
    rss_mib,
    say,
    service_env,
    wait_http,
)

med = statistics.median


@dataclass(frozen=True)
class Size:
    health_s: float = 5.0
    health_conns: int = 32
    rounds: int = 3
    chat_c1_s: float = 3.0
    chat_c32_s: float = 4.0
    chat_conns: int = 32
    history_s: float = 3.0
    history_conns: int = 16
    levels: tuple[int, ...] = (50, 100, 200, 500, 1000)
    stream_timeout: float = 15.0  # a stream not done by then counts as not completed
    saturation_clients: int = 64
    saturation_s: float = 6.0
    sessions: int = 100_000
    idle_websockets: int = 1000
    tokens: int = 20
    token_ms: float = 50.0
    ab_level: int = 100  # the model-transport A/B: streams at once, and rounds of it per transport
    ab_rounds: int = 6  # even: each transport goes first equally often
    resume_finished: int = 200  # resumes of ended turns, one at a time
    resume_running: int = 100  # cut-and-resume cycles on running turns ...
    resume_concurrency: int = 10  # ... this many at once
    buffer_turns: int = 20_000  # turns in the buffer memory probe
    # --stores
    store_workers: tuple[int, ...] = (1, 2)
    store_conns: int = 64
    store_turn_s: float = 2.0
    store_rounds: int = 3
    store_burst: int = 1000
    buffer_streams: int = 100
    buffer_rounds: int = 3
    buffer_saturation_s: float = 3.0
    pool_burst_rounds: int = 2


FULL = Size()
QUICK = Size(
    health_s=0.5,
    health_conns=4,
    rounds=1,
    chat_c1_s=0.5,
    chat_c32_s=0.5,
    chat_conns=4,
    history_s=0.3,
    history_conns=2,
    levels=(5,),
    stream_timeout=20.0,
    saturation_clients=4,
    saturation_s=0.5,
    sessions=2_000,
    idle_websockets=10,
    tokens=5,
    token_ms=20.0,
    ab_level=5,
    ab_rounds=1,
    resume_finished=4,
    resume_running=4,
    resume_concurrency=2,
    buffer_turns=500,
    store_workers=(1, 2),
    store_conns=4,
    store_turn_s=0.3,
    store_rounds=1,
    store_burst=10,
    buffer_streams=5,
    buffer_rounds=1,
    buffer_saturation_s=0.3,
    pool_burst_rounds=1,
)


# Results --------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    service: str
    baseline: str = "—"
    ratio: str = "—"
    bar: str = "—"
    verdict: str = "—"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # whole markdown blocks after the main table

    def add(self, *args: Any, **kw: Any) -> None:
        self.rows.append(Row(*args, **kw))

    def markdown(self, header: str) -> str:
        out = [header]
        if self.rows:
            out += [
                "",
                "| Figure | Service | Baseline | Ratio | Bar | Verdict |",
                "|---|---|---|---|---|---|",
            ]
            out += [
                f"| {r.figure} | {r.service} | {r.baseline} | {r.ratio} | {r.bar} | {r.verdict} |"
                for r in self.rows
            ]
        if self.cpu:
            out += ["", "CPU used by the server under test during each load (100% = one core):", ""]
            out += [f"- {line}" for line in self.cpu]
        if self.notes:
            out += ["", "Notes:", ""]
            out += [f"- {line}" for line in self.notes]
        for section in self.sections:
            out += ["", section.rstrip("\n")]
        return "\n".join(out) + "\n"


# The loads ------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        size: Size,
        pin: bool,
        workdir: Path,
        model_transports: tuple[str, ...] = (),
        ab_only: bool = False,
        workers: int = 1,
        stores: bool = False,
        redis_pools: tuple[str, ...] = (),
        stores_only: bool = False,
        store_workers: tuple[int, ...] | None = None,
    ) -> None:
        self.orders_db = False  # --orders-db: orders on PostgreSQL against SQLite
        self.orders_db_only = False
        self.observability = False  # --observability: metrics and tracing on against off
        self.observability_only = False
        self.obs_services: dict[str, Proc] = {}
        self.store_workers = store_workers
        self.sqlite_pk = False
        self.size = size
        self.workers = workers
        self.stores = stores or stores_only
        self.stores_only = stores_only
        self.redis_pools = redis_pools
        self.server_cpu: int | None = SERVER_CPU if workers == 1 else None
        self.pin = pin
        self.workdir = workdir
        self.fleet = Fleet(workdir, pin)
        self.report = Report()
        self.model_transports = model_transports
        self.ab_only = ab_only
        self.ab_services: dict[str, Proc] = {}

    # set-up

    def start(self) -> None:
        s = self.size
        if self.orders_db_only:  # the orders-db section starts its own model, services and database
            return
        model_fast = ["-m", "tests.openai_server", "--raw", "--tokens", str(s.tokens), "--delay-ms", "0"]
        model_slow = [
            "-m",
            "tests.openai_server",
            "--raw",
            "--tokens",
            str(s.tokens),
            "--delay-ms",
            str(s.token_ms),
        ]
        p_fast, p_slow, p_bare, p_svc, p_svc_stream = (free_port() for _ in range(5))
        self.model_fast = self.fleet.start(
            "model-fast", [PYTHON, *model_fast, "--port", str(p_fast)], p_fast, CLIENT_CPU
        )
        self.model_slow = self.fleet.start(
            "model-slow", [PYTHON, *model_slow, "--port", str(p_slow)], p_slow, CLIENT_CPU
        )
        if self.stores_only:  # the stores section starts its own services
            wait_http(self.model_fast, "/v1/models")
            wait_http(self.model_slow, "/v1/models")
            return
        self.bare = self.fleet.start(
            "bare", hypercorn_argv("bench.bare_app:app", p_bare, self.workers), p_bare, self.server_cpu
        )
        # Two service instances: zero-latency model and 50 ms model (each idle while the other works).
        self.svc = self.fleet.start(
            "service",
            hypercorn_argv("app:app", p_svc, self.workers),
            p_svc,
            self.server_cpu,
            service_env(p_fast, self.workdir, "a"),
        )
        self.svc_stream = self.fleet.start(
            "service-stream",
            hypercorn_argv("app:app", p_svc_stream, self.workers),
            p_svc_stream,
            self.server_cpu,
            service_env(p_slow, self.workdir, "b"),
        )
        if self.observability:
            self._start_observability(p_slow)
        for name in self.model_transports:
            port = free_port()
            env = {**service_env(p_slow, self.workdir, f"ab-{name}"), "BENCH_MODEL_TRANSPORT": name}
            self.ab_services[name] = self.fleet.start(
                f"service-{name}",
                hypercorn_argv("bench.service_app:app", port, self.workers),
                port,
                self.server_cpu,
                env,
            )
        wait_http(self.model_fast, "/v1/models")
        wait_http(self.model_slow, "/v1/models")
        wait_http(self.bare, "/health")
        wait_http(self.svc, "/health")
        wait_http(self.svc_stream, "/health")
        for proc in [*self.ab_services.values(), *self.obs_services.values()]:
            wait_http(proc, "/health")

    def stop(self) -> None:
        self.fleet.stop_all()

    async def settle(self) -> None:
        gc.collect()
        await asyncio.sleep(0.5 if self.size is FULL else 0.05)

    # figures

    async def health(self) -> None:
        s = self.size
        get_bare = loadgen.http_request("GET", "/health", self.bare.port)
        get_svc = loadgen.http_request("GET", "/health", self.svc.port)
        # Alternating short rounds, so drifting load from other work on the machine hits both alike.
        bare = loadgen.LoopResult()
        svc = loadgen.LoopResult()
        bare_cpu, svc_cpu = [], []
        for _ in range(s.rounds):
            for proc, request, into, cpu in (
                (self.bare, get_bare, bare, bare_cpu),
                (self.svc, get_svc, svc, svc_cpu),
            ):
                m = CpuMeter(proc.worker_pids())
                part = await loadgen.request_loop(
                    proc.port, lambda i, r=request: r, s.health_conns, s.health_s / s.rounds
                )
                cpu.append(m.percent())
                into.merge(part)
                await self.settle()
        self.report.cpu.append(
            f"/health: service {f0(statistics.median(svc_cpu))}%, bare {f0(statistics.median(bare_cpu))}%"
        )
        share = svc.rps / bare.rps if bare.rps else float("nan")
        self.report.add(
            f"/health requests/s ({s.health_conns} keep-alive connections)",
            f0(svc.rps),
            f0(bare.rps),
            ratio(svc.rps, bare.rps),
            ">= 0.70 of bare",
            at_least(share * 100, 70, " pts"),
        )
        self.report.add(
            "/health p50 latency (ms)", f1(svc.ms(50)), f1(bare.ms(50)), ratio(svc.ms(50), bare.ms(50))
        )
        self.report.add(
            "/health p99 latency (ms)",
            f1(svc.ms(99)),
            f1(bare.ms(99)),
            ratio(svc.ms(99), bare.ms(99)),
            "< 50 ms",
            at_most(svc.ms(99), 50, " ms"),
        )
        if svc.errors or bare.errors:
            self.report.notes.append(f"/health errors: service {svc.errors}, bare {bare.errors}")

    async def chat_turns(self) -> None:
        s = self.size
        direct = DirectModel(self.model_fast.port)
        try:
            for conns, duration in ((1, s.chat_c1_s), (s.chat_conns, s.chat_c32_s)):
                with on_cpu(SERVER_CPU, self.pin):  # the direct client takes the service's seat
                    d = await direct.loop(conns, duration)
                await self.settle()
                tag = f"c{conns}-{random.randrange(1 << 30)}"  # noqa: S311 - not crypto

                def make(i: int, tag: str = tag) -> bytes:
                    body = orjson.dumps(
                        {"session_id": f"{tag}-{i}", "message": "Where is my order ORD-1001?"}
                    )
                    return loadgen.http_request("POST", "/api/v1/chat", self.svc.port, body)

                m = CpuMeter(self.svc.worker_pids())
                svc = await loadgen.request_loop(self.svc.port, make, conns, duration)
                self.report.cpu.append(f"service JSON chat, concurrency {conns}: {f0(m.percent())}%")
                await self.settle()
                self.history_targets = [f"{tag}-{i}" for i in range(min(len(svc.latencies), 500))]
                added = svc.ms(50) - d.ms(50)
                bar = "<= +5 ms p50 over direct" if conns == 1 else "(info: queueing dominates)"
                verdict = at_most(added, 5, " ms") if conns == 1 else f"+{f1(added)} ms p50"
                self.report.add(
                    f"JSON chat turn p50 (ms), concurrency {conns}",
                    f1(svc.ms(50)),
                    f1(d.ms(50)) + " direct",
                    ratio(svc.ms(50), d.ms(50)),
                    bar,
                    verdict,
                )
                self.report.add(
                    f"JSON chat turn p99 (ms), concurrency {conns}",
                    f1(svc.ms(99)),
                    f1(d.ms(99)) + " direct",
                    ratio(svc.ms(99), d.ms(99)),
                )
                if conns > 1:
                    self.turns_per_s = svc.rps
                    self.report.add(
                        f"JSON chat turns/s, concurrency {conns}",
                        f0(svc.rps),
                        f0(d.rps) + " direct",
                        ratio(svc.rps, d.rps),
                        ">= 50 requests/s per instance",
                        at_least(svc.rps, 50, "/s"),
                    )
                if svc.errors or d.errors:
                    self.report.notes.append(f"chat c{conns} errors: service {svc.errors}, direct {d.errors}")
            with on_cpu(SERVER_CPU, self.pin):
                typed = await direct.loop(1, s.chat_c1_s, typed=True)
            self.report.notes.append(
                "direct calls use the service's own path (openai client, `with_streaming_response`, "
                "lines parsed with orjson); the client's typed stream (pydantic chunks) takes p50 "
                f"{f1(typed.ms(50))} ms for the same call"
            )
        finally:
            await direct.close()

    async def history(self) -> None:
        s = self.size
        targets = getattr(self, "history_targets", []) or ["none"]

        def make(i: int) -> bytes:
            return loadgen.http_request(
                "GET", f"/api/v1/sessions/{targets[i % len(targets)]}/history", self.svc.port
            )

        get_bare = loadgen.http_request("GET", "/health", self.bare.port)
        bare = await loadgen.request_loop(self.bare.port, lambda i: get_bare, s.history_conns, s.history_s)
        await self.settle()
        svc = await loadgen.request_loop(self.svc.port, make, s.history_conns, s.history_s)
        self.report.add(
            f"session history read p99 (ms), {s.history_conns} connections",
            f1(svc.ms(99)),
            f1(bare.ms(99)) + " bare /health",
            ratio(svc.ms(99), bare.ms(99)),
            "< 100 ms",
            at_most(svc.ms(99), 100, " ms"),
        )
        if svc.errors:
            self.report.notes.append(f"history read errors: {svc.errors}")

    def _svc_sse(self, port: int | None = None) -> loadgen.Starter:
        return loadgen.service_chats("SSE", port or self.svc_stream.port)

    def _svc_ws(self) -> loadgen.Starter:
        return loadgen.service_chats("WebSocket", self.svc_stream.port)

    def _bare_sse(self, ms: float) -> loadgen.Starter:
        return loadgen.bare_streams("SSE", self.bare.port, self.size.tokens, ms)

    def _bare_ws(self, ms: float) -> loadgen.Starter:
        return loadgen.bare_streams("WebSocket", self.bare.port, self.size.tokens, ms)

    async def streaming(self) -> None:
        """Streams at each level against the bare endpoint. At the levels of the bar (<= 100 per
        worker) bare and service alternate for `rounds` rounds and the figures are medians: one
        phase's p99 is the slowest of 100 first tokens, and a single stall of the machine (seen on
        the bare endpoint as often as on the service) moves it by 100 ms or more."""
        s = self.size
        for transport in ("SSE", "WebSocket"):
            for level in s.levels:
                svc_start = self._svc_sse() if transport == "SSE" else self._svc_ws()
                bare_start = self._bare_sse(s.token_ms) if transport == "SSE" else self._bare_ws(s.token_ms)
                in_bar = level <= 100 * self.workers
                bares: list[loadgen.StreamPhase] = []
                svcs: list[loadgen.StreamPhase] = []
                bare_cpu: list[float] = []
                svc_cpu: list[float] = []
                for _ in range(s.rounds if in_bar else 1):
                    m = CpuMeter(self.bare.worker_pids())
                    bares.append(await loadgen.stream_phase(level, bare_start, s.stream_timeout))
                    bare_cpu.append(m.percent())
                    await self.settle()
                    m = CpuMeter(self.svc_stream.worker_pids())
                    svcs.append(await loadgen.stream_phase(level, svc_start, s.stream_timeout))
                    svc_cpu.append(m.percent())
                    await self.settle()
                self._stream_rows(f"{transport} x{level}", level, in_bar, svcs, bares)
                self.report.cpu.append(
                    f"{transport} x{level}: service {f0(med(svc_cpu))}%, bare {f0(med(bare_cpu))}%"
                )

    def _stream_rows(
        self,
        name: str,
        level: int,
        in_bar: bool,
        svcs: list[loadgen.StreamPhase],
        bares: list[loadgen.StreamPhase],
    ) -> None:
        rounds = f" (median of {len(svcs)} rounds)" if len(svcs) > 1 else ""
        completion = min(p.completion for p in svcs)  # every round must complete
        bare_completion = min(p.completion for p in bares)
        self.report.add(
            f"{name}: completed %" + (f" (lowest of {len(svcs)} rounds)" if len(svcs) > 1 else ""),
            f1(completion),
            f1(bare_completion),
            ratio(completion, bare_completion),
            "100% (bar at <= 100/worker)" if in_bar else "(info)",
            at_least(completion, 100, " pts") if in_bar else "—",
        )
        p50_svc, p50_bare = (
            med([p.first_token_ms(50) for p in svcs]),
            med([p.first_token_ms(50) for p in bares]),
        )
        self.report.add(
            f"{name}: first token p50 (ms){rounds}", f1(p50_svc), f1(p50_bare), ratio(p50_svc, p50_bare)
        )
        p99s = [p.first_token_ms(99) for p in svcs]
        p99b = [p.first_token_ms(99) for p in bares]
        over = [a - b for a, b in zip(p99s, p99b, strict=True)]
        p99_svc, p99_bare = med(p99s), med(p99b)
        self.report.add(
            f"{name}: first token p99 (ms){rounds}",
            f1(p99_svc),
            f1(p99_bare),
            ratio(p99_svc, p99_bare),
            "<= bare + 150 ms; < 2 s" if in_bar else "< 2 s (seed floor)",
            at_most(med(over), 150, " ms") if in_bar else at_most(p99_svc, 2000, " ms"),
        )
        if len(over) > 1:
            self.report.notes.append(
                f"{name} first-token p99 over bare, per round (bare then service): "
                + ", ".join(f"{x:+.0f} ms" for x in over)
                + f"; median {med(over):+.0f} ms"
            )
        eps = med([p.events_per_s for p in svcs])
        tps, bare_tps = med([p.tokens_per_s for p in svcs]), med([p.tokens_per_s for p in bares])
        self.report.add(
            f"{name}: events/s (tokens/s){rounds}",
            f"{f0(eps)} ({f0(tps)})",
            f0(med([p.events_per_s for p in bares])),
            ratio(tps, bare_tps),
        )

    async def model_transport_ab(self) -> None:
        """The same service on each model transport: first tokens at `ab_level` streams and client CPU."""
        s = self.size
        names = list(self.ab_services)
        p99: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        p50: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        cpu: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        done: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        for i in range(s.ab_rounds):
            order = names if i % 2 == 0 else names[::-1]  # drift hits every transport alike
            for name in ["bare", *order]:
                proc = self.bare if name == "bare" else self.ab_services[name]
                start = self._bare_sse(s.token_ms) if name == "bare" else self._svc_sse(proc.port)
                if name != "bare":
                    # Unmeasured first: every transport starts with a warm pool. Otherwise one that keeps
                    # idle connections forever starts warm and one that expires them starts cold.
                    await loadgen.stream_phase(s.ab_level, start, s.stream_timeout)
                    await self.settle()
                m = CpuMeter(proc.worker_pids())
                phase = await loadgen.stream_phase(s.ab_level, start, s.stream_timeout)
                cpu[name].append(m.percent())
                p99[name].append(phase.first_token_ms(99))
                p50[name].append(phase.first_token_ms(50))
                done[name].append(phase.completion)
                await self.settle()
        client = self._client_cpu(names)
        self.report.sections.append(_ab_table(s, names, p99, p50, cpu, done, client))

    def _start_observability(self, model_port: int) -> None:
        """One service per variant on the 50 ms model, and an OTLP/HTTP receiver on the client's CPU."""
        port = free_port()
        argv = [PYTHON, "-m", "tests.otlp_receiver", "--port", str(port), "--count-only"]
        self.receiver = self.fleet.start("otlp-receiver", argv, port, CLIENT_CPU)
        endpoint = f"http://127.0.0.1:{port}"
        variants = {
            "off": {"ENABLE_METRICS": "false"},
            "metrics": {"ENABLE_METRICS": "true"},
            "tracing": {"ENABLE_METRICS": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
            "both": {"ENABLE_METRICS": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
            "both, probes traced": {
                "ENABLE_METRICS": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_PYTHON_ASGI_EXCLUDED_URLS": "",  # trace /health too: the raw per-request cost
            },
            "both-10%": {
                "ENABLE_METRICS": "true",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
        }
        for name, extra in variants.items():
            port = free_port()
            env = {**service_env(model_port, self.workdir, f"obs-{name}"), **extra}
            self.obs_services[name] = self.fleet.start(
                f"service-{name}", hypercorn_argv("app:app", port, self.workers), port, self.server_cpu, env
            )

    async def observability_ab(self) -> None:
        """Metrics on against off, tracing (to a loopback receiver) on against off: /health and SSE x100."""
        s = self.size
        names = list(self.obs_services)
        rps: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        p99: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        done: dict[str, list[float]] = {n: [] for n in ["bare", *names]}
        procs = {"bare": self.bare, **self.obs_services}
        for name, proc in procs.items():  # warm: imports, pools, the exporter's first connection
            start = self._bare_sse(s.token_ms) if name == "bare" else self._svc_sse(proc.port)
            await loadgen.stream_phase(4, start, s.stream_timeout)
        for i in range(s.ab_rounds):
            order = ["bare", *names] if i % 2 == 0 else ["bare", *names[::-1]]  # drift hits all alike
            for name in order:
                proc = procs[name]
                get = loadgen.http_request("GET", "/health", proc.port)
                loop = await loadgen.request_loop(
                    proc.port, lambda _i, r=get: r, s.health_conns, s.health_s / s.rounds
                )
                rps[name].append(loop.rps)
                await self.settle()
                level = s.ab_level
                start = self._bare_sse(s.token_ms) if name == "bare" else self._svc_sse(proc.port)
                phase = await loadgen.stream_phase(level, start, s.stream_timeout)
                p99[name].append(phase.first_token_ms(99))
                done[name].append(phase.completion)
                await self.settle()
        received = _get_json(self.receiver.port, "/count")
        self.report.sections.append(_observability_table(s, names, rps, p99, done, received))

    def _client_cpu(self, names: list[str]) -> dict[str, Any]:
        """bench/client_cpu.py in a subprocess: its own process, so its CPU time is the model client's."""
        argv = [PYTHON, str(ROOT / "bench" / "client_cpu.py"), "--json", "--transports", ",".join(names)]
        argv += ["--quick"] if self.size is QUICK else []
        argv += [] if self.pin else ["--no-pin"]
        out = subprocess.run(argv, cwd=str(ROOT), capture_output=True, timeout=300, check=True)  # noqa: S603
        result: dict[str, Any] = orjson.loads(out.stdout.splitlines()[-1])
        return result

    async def saturation(self) -> None:
        s = self.size
        port = self.svc.port

        def start(i: int) -> Any:
            body = orjson.dumps({"session_id": f"sat-{i}", "message": "go"})
            return loadgen.sse_stream(
                port, loadgen.http_request("POST", "/api/v1/chat/stream", port, body, True)
            )

        b_events = b_s = events = tokens = secs = 0.0
        bare_cpu, svc_cpu = [], []
        for _ in range(s.rounds):
            m = CpuMeter(self.bare.worker_pids())
            e, _, t = await loadgen.saturation(
                self._bare_sse(0), s.saturation_clients, s.saturation_s / s.rounds
            )
            bare_cpu.append(m.percent())
            b_events, b_s = b_events + e, b_s + t
            await self.settle()
            m = CpuMeter(self.svc.worker_pids())
            e, k, t = await loadgen.saturation(start, s.saturation_clients, s.saturation_s / s.rounds)
            svc_cpu.append(m.percent())
            events, tokens, secs = events + e, tokens + k, secs + t
            await self.settle()
        svc_pct, bare_pct = statistics.median(svc_cpu), statistics.median(bare_cpu)
        self.report.cpu.append(f"SSE saturation: service {f0(svc_pct)}%, bare {f0(bare_pct)}%")
        if self.workers == 1 and self.size is FULL and min(svc_pct, bare_pct) < 90:
            self.report.notes.append(
                f"**disturbed run**: at saturation the servers got only {f0(min(svc_pct, bare_pct))}% of "
                "their core (about 100% on a quiet machine): other work took CPU 0, so latencies and "
                "ratios of this run measure the machine's load as much as the service"
            )
        bare_rate, tok_rate = b_events / b_s, tokens / secs
        share = tok_rate / bare_rate if bare_rate else float("nan")
        self.report.add(
            f"saturation SSE tokens/s (zero-delay model, {s.saturation_clients} clients)",
            f"{f0(tok_rate)} in {f0(events / secs)} events/s",
            f0(bare_rate),
            ratio(tok_rate, bare_rate),
            ">= 0.45 of bare",
            at_least(share * 100, 45, " pts"),
        )

    async def idle_websockets(self) -> None:
        s = self.size
        for label, proc, path in (("service", self.svc, "/api/v1/chat/ws"), ("bare", self.bare, "/ws")):
            gc.collect()
            before = proc.rss_mib()
            hold = asyncio.Event()
            opened, tasks = await loadgen.open_idle_websockets(
                f"ws://127.0.0.1:{proc.port}{path}", s.idle_websockets, hold
            )
            await asyncio.sleep(1.0 if self.size is FULL else 0.1)
            after = proc.rss_mib()
            hold.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            setattr(self, f"ws_{label}", (opened, before, after))
            await self.settle()
        opened, before, after = self.ws_service  # type: ignore[attr-defined]
        b_opened, b_before, b_after = self.ws_bare  # type: ignore[attr-defined]
        self.report.add(
            f"RSS with {s.idle_websockets:,} idle WebSockets (MiB; +delta)",
            f"{f1(after)} (+{f1(after - before)}; {opened} open)",
            f"{f1(b_after)} (+{f1(b_after - b_before)}; {b_opened} open)",
            ratio(after, b_after),
            "<= 200 MiB (1,000 sockets)",
            at_most(after, 200, " MiB") if opened == s.idle_websockets else f"**missed**: {opened} opened",
        )

    def session_memory(self) -> None:
        s = self.size
        out = subprocess.run(  # noqa: S603 - our own script
            [PYTHON, str(Path(__file__)), "--probe-sessions", str(s.sessions)],
            cwd=str(ROOT),
            capture_output=True,
            timeout=240,
            check=True,
        )
        probe = orjson.loads(out.stdout.splitlines()[-1])
        used = probe["after_mib"] - probe["before_mib"]
        per = used * 1024 * 1024 / s.sessions
        self.report.add(
            f"memory store: {s.sessions:,} idle sessions (MiB added; bytes/session)",
            f"{f1(used)} ({f0(per)} B/session; RSS {f1(probe['after_mib'])})",
            "—",
            "—",
            "<= 1 GiB for 100,000",
            at_most(per * 100_000 / 1024 / 1024, 1024, " MiB (scaled to 100,000)"),
        )
        self.report.notes.append(
            "each probe session holds 2 turns (4 messages, ~0.7 KB of text, one tool call); "
            f"filled in {probe['seconds']:.1f} s"
        )

    async def resume(self) -> None:
        """Resume latency on the streaming service (in-process buffer); a real turn for the probe."""
        s = self.size
        self.turn_events = await resume.one_turn_events(self.svc_stream.port)
        figures = await resume.resume_latency(
            self.svc_stream.port, s.resume_finished, s.resume_running, s.resume_concurrency
        )
        for which, label, n in (
            ("finished", "an ended turn, one resume at a time", s.resume_finished),
            ("running", f"a running turn, {s.resume_concurrency} at once", s.resume_running),
        ):
            values = figures.finished_ms if which == "finished" else figures.running_ms
            self.report.add(
                f"resume latency p50 / p99 (ms), {label} ({len(values)} of {n})",
                f"{f1(figures.ms(which, 50))} / {f1(figures.ms(which, 99))}",
                bar="(info: connect to first replayed event)",
            )
        if figures.failures:
            self.report.notes.append(f"resume failures: {figures.failures}")
        await self.settle()

    def buffer_memory(self) -> None:
        s = self.size
        events = getattr(self, "turn_events", [])
        if not events:
            return
        path = self.workdir / "turn-events.json"
        path.write_bytes(orjson.dumps([e.decode() for e in events]))
        out = subprocess.run(  # noqa: S603 - our own script
            [PYTHON, str(Path(__file__)), "--probe-buffer", str(s.buffer_turns), "--events", str(path)],
            cwd=str(ROOT),
            capture_output=True,
            timeout=240,
            check=True,
        )
        probe = orjson.loads(out.stdout.splitlines()[-1])
        n = s.buffer_turns
        active = (probe["active_mib"] - probe["before_mib"]) * 1024 * 1024 / n
        kept = (probe["kept_mib"] - probe["before_mib"]) * 1024 * 1024 / n
        self.report.add(
            f"turn buffer: memory per active turn ({n:,} turns mid-answer, "
            f"{probe['active_events']} of {probe['events']} events each)",
            f"{f0(active)} B/turn",
            bar="(info)",
        )
        self.report.add(
            f"turn buffer: memory per ended turn kept for resume ({probe['events']} events, "
            f"{f0(probe['event_bytes'])} B of JSON)",
            f"{f0(kept)} B/turn",
            bar="(info)",
        )
        rate = getattr(self, "turns_per_s", float("nan"))
        keep, cap_mib = 300, 32
        self.report.notes.append(
            f"the turn buffer keeps an ended turn RESUME_BUFFER_SECONDS ({keep} s by default) while the "
            f"ended turns' events fit in RESUME_BUFFER_MAX_MB ({cap_mib} MiB by default): at this run's "
            f"{f0(rate)} JSON turns/s, {f0(rate * keep)} turns would be kept by time alone "
            f"({f0(rate * keep * kept / 1024 / 1024)} MiB per worker); the cap keeps about "
            f"{f0(cap_mib * 1024 * 1024 / probe['event_bytes'])} of them"
        )

    async def orders_db_section(self) -> None:
        """Orders on PostgreSQL against SQLite (bench/orders_db.py): its own model, services and database."""
        await orders_db.run_section(self.fleet, self.size, self.workdir, self.pin, self.report)

    async def stores_section(self) -> None:
        from bench.stores import StoresBench

        part = StoresBench(self.size, self.fleet, self.pin, self.workdir, self.model_fast, self.model_slow)
        part.sqlite_pk = self.sqlite_pk
        await part.run(self.redis_pools, self.store_workers)  # the main services stay up, idle
        self.report.sections += part.sections

    async def warm_up(self) -> None:
        """First requests pay for imports, connection pools and caches: keep them out of the figures."""
        for proc in (self.svc, self.svc_stream):
            body = orjson.dumps({"session_id": "warm-up", "message": "hello"})
            make = loadgen.http_request("POST", "/api/v1/chat", proc.port, body)
            await loadgen.request_loop(proc.port, lambda i, m=make: m, 2, 30, max_requests=6)
        get = loadgen.http_request("GET", "/health", self.bare.port)
        await loadgen.request_loop(self.bare.port, lambda i: get, 2, 30, max_requests=20)
        for start in (self._svc_sse(), self._svc_ws(), self._bare_sse(0), self._bare_ws(0)):
            await loadgen.stream_phase(4, start, 30)

    async def run_all(self) -> None:
        steps = (
            self.warm_up,
            self.health,
            self.chat_turns,
            self.history,
            self.saturation,
            self.streaming,
            self.resume,
            *([self.model_transport_ab] if self.model_transports else []),
            *([self.observability_ab] if self.observability else []),
            self.idle_websockets,
            *([self.stores_section] if self.stores else []),
            *([self.orders_db_section] if self.orders_db else []),
        )
        if self.ab_only:
            steps = (self.model_transport_ab,)
        elif self.observability_only:
            steps = (self.warm_up, self.observability_ab)
        elif self.stores_only:
            steps = (self.stores_section,)
        elif self.orders_db_only:
            steps = (self.orders_db_section,)
        for step in steps:
            started = time.perf_counter()
            await step()
            say(f"  {step.__name__}: {time.perf_counter() - started:.1f} s")


def _get_json(port: int, path: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:  # noqa: S310
            found: dict[str, Any] = orjson.loads(response.read())
            return found
    except OSError:
        return {}


def _observability_table(
    s: Size,
    names: list[str],
    rps: dict[str, list[float]],
    p99: dict[str, list[float]],
    done: dict[str, list[float]],
    received: dict[str, Any],
) -> str:
    """Metrics and tracing against both off, in one run: medians of alternating rounds."""
    out = [
        "## Metrics and tracing: on against off, same run (rounds alternate the order)",
        "",
        f"One service per variant on the {s.token_ms:g} ms model; tracing exports over OTLP/HTTP to a "
        f"receiver on the client's CPU ({received.get('exports', 0):,} exports, "
        f"{received.get('bytes', 0) / 1e6:.1f} MB received in the run; it counts, it does not decode). "
        "/health is not traced by default (probes never are); `both, probes traced` traces it too "
        "(OTEL_PYTHON_ASGI_EXCLUDED_URLS empty): the raw cost of a span per request. `both-10%` "
        f"samples one trace in ten (OTEL_TRACES_SAMPLER=parentbased_traceidratio). Medians of "
        f"{s.ab_rounds} rounds.",
        "",
        "| figure | " + " | ".join(names) + " | " + " | ".join(f"{n}/off" for n in names[1:]) + " | bare |",
        "|---" * (2 + 2 * len(names) - 1) + "|",
    ]

    def row(label: str, values: dict[str, float], fmt: Any) -> None:
        cells = [fmt(values[n]) for n in names] + [ratio(values[n], values["off"]) for n in names[1:]]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(values['bare'])} |")

    row(
        f"/health requests/s ({s.health_conns} connections)",
        {n: med(v) for n, v in rps.items()},
        f0,
    )
    row(f"SSE x{s.ab_level}: first token p99 (ms)", {n: med(v) for n, v in p99.items()}, f1)
    row(f"SSE x{s.ab_level}: completed %", {n: med(v) for n, v in done.items()}, f1)
    bare_rps, bare_p99 = med(rps["bare"]), med(p99["bare"])
    out += [
        "",
        "Against the bars (DESIGN.md) with both on: /health at "
        f"{med(rps['both']) / bare_rps:.2f} of bare (bar >= 0.70); SSE x{s.ab_level} first-token p99 "
        f"bare + {med(p99['both']) - bare_p99:.0f} ms (bar <= + 150 ms).",
    ]
    return "\n".join(out) + "\n"


def _ab_table(
    s: Size,
    names: list[str],
    p99: dict[str, list[float]],
    p50: dict[str, list[float]],
    cpu: dict[str, list[float]],
    done: dict[str, list[float]],
    client: dict[str, Any],
) -> str:
    """The A/B as its own table: every figure per transport and as a ratio to the first one."""
    first, others = names[0], names[1:]
    head = " | ".join(names) + "".join(f" | {n}/{first}" for n in others)
    out = [
        "## Model client transports, same run (rounds alternate the order)",
        "",
        f"Each measured SSE x{s.ab_level} on a service follows an unmeasured one on it (warm pools).",
        "",
        f"| figure | {head} | bare |",
        "|---" * (1 + 2 * len(names)) + "|",
    ]

    def row(label: str, values: dict[str, float], fmt: Any, bare: str = "—") -> None:
        cells = [fmt(values[n]) for n in names] + [ratio(values[n], values[first]) for n in others]
        out.append(f"| {label} | " + " | ".join(cells) + f" | {bare} |")

    for load, figures in client["loads"].items():
        label = (
            f"client CPU per streamed call (ms), {load}: c={figures['concurrency']}, "
            f"{client['tokens']} tokens {figures['delay_ms']:g} ms apart"
        )
        row(label, figures["cpu_ms"], lambda x: f"{x:.3f}")
    lvl, rounds = s.ab_level, s.ab_rounds
    row(
        f"SSE x{lvl}: first token p99 (ms), median of {rounds} rounds",
        {n: med(p99[n]) for n in names},
        f1,
        f1(med(p99["bare"])),
    )
    row(
        f"SSE x{lvl}: first token p50 (ms), median", {n: med(p50[n]) for n in names}, f1, f1(med(p50["bare"]))
    )
    row(f"SSE x{lvl}: completed %, worst round", {n: min(done[n]) for n in names}, f1, f1(min(done["bare"])))
    row(
        f"SSE x{lvl}: service worker CPU %, median", {n: med(cpu[n]) for n in names}, f0, f0(med(cpu["bare"]))
    )
    out += ["", f"SSE x{lvl} first-token p99 per round (ms):", ""]
    out += [f"- {n}: " + ", ".join(f1(x) for x in p99[n]) for n in ["bare", *names]]
    for n in others:  # the pair in one round shares that round's background load
        pairs = [a / b for a, b in zip(p99[n], p99[first], strict=True) if b]
        out.append(
            f"- {n}/{first} per round: " + ", ".join(f"{x:.2f}" for x in pairs) + f"; median {med(pairs):.2f}"
        )
    out += ["", f"client CPU per call per round (ms; {client['calls']} calls a round):", ""]
    for load, figures in client["loads"].items():
        rounds_ms = figures["cpu_ms_rounds"]
        out.append(
            f"- {load}: " + "; ".join(f"{n} " + ", ".join(f"{x:.3f}" for x in rounds_ms[n]) for n in names)
        )
    return "\n".join(out) + "\n"


class DirectModel:
    """The service's own model call, made directly: the same client, request and stream parsing."""

    def __init__(self, port: int) -> None:
        import httpx2
        import openai

        from msev15.agent.loop import INSTRUCTIONS
        from msev15.tools.clock import builtin_tools
        from msev15.tools.mail import mail_tools
        from msev15.tools.orders import order_tools
        from msev15.tools.registry import ToolRegistry

        registry = ToolRegistry(15.0, 8000)
        registry.register_all(builtin_tools())
        registry.register_all(order_tools(None))  # type: ignore[arg-type] - only the specs are used
        registry.register_all(mail_tools(None, None))  # type: ignore[arg-type]
        self.tools = registry.specs()
        self.instructions = INSTRUCTIONS
        # No keep-alive, like the service (which closes its model connection after `[DONE]`): a reused
        # connection to an asyncio Hypercorn server stalls ~40 ms (see bench/README.md).
        http = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0))
        self.client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0, http_client=http
        )

    def params(self) -> dict[str, Any]:
        messages = [
            {"role": "system", "content": self.instructions},
            {"role": "user", "content": "Where is my order ORD-1001?"},
        ]
        return {
            "model": "gpt-4o",
            "messages": messages,
            "stream": True,
            "temperature": 0.2,
            "tools": self.tools,
        }

    async def call(self, typed: bool) -> None:
        if typed:
            stream = await self.client.chat.completions.create(**self.params())
            async for _chunk in stream:
                pass
            return
        async with self.client.chat.completions.with_streaming_response.create(**self.params()) as response:
            async for line in response.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    orjson.loads(line[5:].strip())

    async def loop(self, conns: int, duration: float, typed: bool = False) -> loadgen.LoopResult:
        result = loadgen.LoopResult()
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await self.call(typed)
                except Exception:  # noqa: BLE001 - counted, the loop goes on
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        result.elapsed = time.perf_counter() - started
        return result

    async def close(self) -> None:
        await self.client.close()


# Memory probe (a subprocess, so the figure is the store alone) ---------------------------------


def probe_sessions(count: int) -> None:
    from msev15.stores.sessions import MemorySessionStore, Message

    def rss() -> float:
        return rss_mib(os.getpid())

    async def fill() -> MemorySessionStore:
        store = MemorySessionStore(max_sessions=count, max_per_tenant=max(count, 1))
        now = time.time()
        for i in range(count):
            tenant = f"shop-{i % 20}"
            sid = f"web-{i:08d}-{random.randrange(1 << 30):x}"  # noqa: S311
            email = f"customer{i}@example.com"
            order = f"ORD-{1000 + i}"
            call = {
                "id": f"call_{i:x}",
                "name": "get_order",
                "arguments": {"order_id": order, "customer_email": email},
                "ok": True,
            }
            await store.save_turn(
                tenant,
                sid,
                [
                    Message("user", f"Hi, where is my order {order}? My email is {email}.", now),
                    Message(
                        "assistant",
                        f"Your order {order} was shipped yesterday with DHL and should arrive within "
                        "two to three working days. You will get an email with the tracking link as "
                        "soon as the carrier scans the parcel. Is there anything else I can help with?",
                        now,
                        [call],
                    ),
                ],
                metadata={},
            )
            await store.save_turn(
                tenant,
                sid,
                [
                    Message("user", f"Thanks! Can I still change the address for {order}?", now),
                    Message(
                        "assistant",
                        "It has already left the warehouse, so the address can no longer be changed; "
                        "the carrier's link lets you redirect it to a pickup point.",
                        now,
                    ),
                ],
            )
        return store

    gc.collect()
    before = rss()
    started = time.perf_counter()
    store = asyncio.run(fill())
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss()
    assert len(store) == count
    sys.stdout.write(
        orjson.dumps({"before_mib": before, "after_mib": after, "seconds": seconds}).decode() + "\n"
    )


# Entry point ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny size (seconds): for the smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and client to separate CPUs"
    )
    parser.add_argument(
        "--model-transports",
        default="",
        help="comma-separated names from bench/model_transports.py: adds an A/B of the model client's "
        "HTTP transport (e.g. lean,aiohttp)",
    )
    parser.add_argument(
        "--ab-only",
        action="store_true",
        help="only the --model-transports A/B (about 2 minutes): to repeat it in quiet moments",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Hypercorn workers of the service and of the bare app"
    )
    parser.add_argument(
        "--stores",
        action="store_true",
        help="add the session stores section (memory, SQLite, Redis at 1 and 2 workers) and the Redis "
        "turn buffer against the in-process one; needs redis-server (about 3 more minutes)",
    )
    parser.add_argument(
        "--stores-only",
        action="store_true",
        help="only the --stores section (and --redis-pools): to repeat it in quiet moments",
    )
    parser.add_argument(
        "--store-workers",
        help="with --stores: the worker counts of the stores table (default 1,2; empty: none, e.g. "
        "to repeat only --redis-pools)",
    )
    parser.add_argument(
        "--redis-pools",
        default="",
        help="with --stores: comma-separated REDIS_MAX_CONNECTIONS values to compare (e.g. 16,32,64,128); "
        "fifo:N puts that pool behind a fair gate (bench/redis_pool.py)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="run in a new folder under this one and leave it there: every process's log and database",
    )
    parser.add_argument(
        "--sqlite-pk",
        action="store_true",
        help="with --stores: also SQLite without its per-new-session counts (BENCH_SQLITE_ROOM=pk), "
        "to price them",
    )
    parser.add_argument(
        "--observability",
        action="store_true",
        help="add metrics on/off and tracing on/off (to a loopback OTLP receiver): /health and SSE x100",
    )
    parser.add_argument(
        "--observability-only", action="store_true", help="only the --observability section (about 3 minutes)"
    )
    parser.add_argument(
        "--orders-db",
        action="store_true",
        help="add orders on PostgreSQL against SQLite: a get_order JSON turn (c=1) and create_order "
        "turns at c=32 on each; needs Debian's postgresql (about 1 more minute)",
    )
    parser.add_argument("--orders-db-only", action="store_true", help="only the --orders-db section")
    parser.add_argument("--probe-sessions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-buffer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_sessions:
        probe_sessions(args.probe_sessions)
        return 0
    if args.probe_buffer:
        sys.stdout.write(orjson.dumps(resume.probe_buffer(args.probe_buffer, args.events)).decode() + "\n")
        return 0
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    size = QUICK if args.quick else FULL
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and os.cpu_count() is not None
    pin = pin and args.workers == 1  # more workers than one: every process may use every core
    pools = tuple(x.strip() for x in args.redis_pools.split(",") if x.strip())
    if any(not x.removeprefix("fifo:").isdigit() for x in pools):
        parser.error("--redis-pools takes N or fifo:N values, e.g. 32,64,fifo:64")
    load_before = load_average()
    with contextlib.suppress(ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 16384), hard), hard))

    def _term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    started = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        kept = tempfile.mkdtemp(prefix="msev15-bench-", dir=args.keep)
        say(f"logs and databases stay in {kept}")
    workdir = (
        contextlib.nullcontext(kept) if args.keep else tempfile.TemporaryDirectory(prefix="msev15-bench-")
    )
    with workdir as tmp:
        transports = tuple(t for t in args.model_transports.split(",") if t)
        bench = Bench(
            size,
            pin,
            Path(tmp),
            transports,
            args.ab_only and bool(transports),
            args.workers,
            args.stores,
            pools,
            args.stores_only,
            None if args.store_workers is None else tuple(int(x) for x in args.store_workers.split(",") if x),
        )
        bench.sqlite_pk = args.sqlite_pk
        bench.observability = args.observability or args.observability_only
        bench.observability_only = args.observability_only
        bench.orders_db = args.orders_db or args.orders_db_only
        bench.orders_db_only = args.orders_db_only
        try:
            if pin:
                os.sched_setaffinity(0, {CLIENT_CPU})
            say("starting model servers, bare app and service ...")
            bench.start()
            asyncio.run(bench.run_all())
            if not (bench.ab_only or bench.stores_only or bench.observability_only or bench.orders_db_only):
                bench.session_memory()
                bench.buffer_memory()
        except KeyboardInterrupt:
            say("interrupted: stopping everything this run started")
            return 130
        finally:
            bench.stop()
    took = time.perf_counter() - started
    header = (
        f"# Benchmark: service vs bare Quart ({'quick' if args.quick else 'full'} run, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {took:.0f} s, {os.cpu_count()} CPUs, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''}, "
        f"{'pinned: servers CPU 0, client and model servers CPU 1' if pin else 'not pinned'})"
    )
    bench.report.notes.append(
        f"load average (1/5/15 min) at the start {load_before}, at the end {load_average()}: "
        "other work on the machine shows there"
    )
    text = bench.report.markdown(header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
