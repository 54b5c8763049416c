"""The session stores under load (`bench/run.py --stores`), the Redis turn buffer against the
in-process one, and the Redis pool size (`--redis-pools`).

For each worker count: a service per store on the zero-latency model (JSON turns/s: a closed loop
of new sessions, the stores alternating in short rounds so drifting background load hits each
alike) and a service per store on the 50 ms model (a burst of new SSE chats all at once). With
one worker the services sit on the server CPU and the client, the model stand-ins and
redis-server on the other; with more workers than that nothing is pinned: the workers, the
client, the model stand-ins and redis-server share the cores.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import shutil
import socket
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench import loadgen
from bench.common import (
    CLIENT_CPU,
    SERVER_CPU,
    CpuMeter,
    Fleet,
    Proc,
    at_least,
    f0,
    f1,
    free_port,
    hypercorn_argv,
    on_cpu,
    ratio,
    say,
    service_env,
    set_affinity,
    table,
    wait_http,
)
from bench.resume import ResumeFigures, chat_request, resume_latency

if TYPE_CHECKING:
    from bench.run import Size

STORES = ("memory", "sqlite", "redis")
REDIS_BUFFER = "memory + Redis buffer"  # the memory store with the turn buffer in Redis (bench.service_app)
SQLITE_PK = "sqlite, no session counts"  # BENCH_SQLITE_ROOM=pk through bench.service_app


@dataclass
class Service:
    label: str  # "memory", "sqlite", "redis", REDIS_BUFFER, or "redis pool N"
    store: str
    workers: int
    fast: Proc  # on the zero-latency model
    slow: Proc  # on the 50 ms model


@dataclass
class Turns:
    rounds: list[float] = field(default_factory=list)  # turns/s per round
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: list[float] = field(default_factory=list)  # the service's workers, % of one core
    redis_cpu: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else float("nan")

    def ms(self, q: float) -> float:
        return loadgen.percentile(self.latencies, q) * 1000


def _failures(phase: loadgen.StreamPhase) -> str:
    codes = Counter(
        r.error or ("no answer" if r.status == 0 else "cut short") for r in phase.results if not r.completed
    )
    return ", ".join(f"{n} {code}" for code, n in codes.most_common()) or "none"


def redis_command(port: int, *args: str) -> bytes:
    """One command to redis-server in RESP, its raw reply (enough for FLUSHALL and INFO)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        reply = sock.recv(65536)
        if reply.startswith(b"$"):
            size = int(reply[1 : reply.index(b"\r\n")])
            while len(reply) < size + len(str(size)) + 5:
                reply += sock.recv(65536)
        return reply


class StoresBench:
    def __init__(
        self, size: Size, fleet: Fleet, pin: bool, workdir: Path, model_fast: Proc, model_slow: Proc
    ) -> None:
        self.size = size
        self.fleet = fleet
        self.pin = pin
        self.workdir = workdir
        self.model_fast = model_fast
        self.model_slow = model_slow
        self.sections: list[str] = []
        self.notes: list[str] = []
        self.redis: Proc | None = None
        self.redis_db = itertools.count()  # a database per service: each has its own keys and cap
        self._tags = itertools.count()
        self.sqlite_pk = False  # also a SQLite service without the per-new-session counts (a bench swap)

    # processes

    def start_redis(self) -> Proc:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--stores needs redis-server (Debian package redis-server)")
        port = free_port()
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--databases", "64",
            "--daemonize", "no",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip
        proc = self.fleet.start("redis", argv, port, CLIENT_CPU)
        for _ in range(100):
            try:
                if redis_command(port, "PING").startswith(b"+PONG"):
                    return proc
            except OSError:
                pass
            if proc.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING")

    def _env(
        self, store: str, model: Proc, pool: int | None, buffer: str | None
    ) -> tuple[str, dict[str, str]]:
        tag = f"st{next(self._tags)}"
        env = service_env(model.port, self.workdir, tag, store)
        # a closed loop of new sessions must not meet the per-tenant cap (10,000 by default)
        env["MAX_SESSIONS_PER_TENANT"] = "100000"
        if store == "redis" or buffer == "redis":
            assert self.redis is not None
            env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis.port}/{next(self.redis_db) % 64}"
        if pool is not None:
            env["REDIS_MAX_CONNECTIONS"] = str(pool)
        if buffer == "redis":
            env["BENCH_TURN_BUFFER"] = "redis"
        if buffer == "fifo":
            env["BENCH_REDIS_POOL"] = "fifo"
        if buffer == "sqlite-pk":
            env["BENCH_SQLITE_ROOM"] = "pk"
        return tag, env

    def start_services(self, specs: list[tuple[str, str, int, int | None, str | None]]) -> list[Service]:
        """(label, store, workers, pool, swap) each as two services: zero-latency and 50 ms model.

        `swap`: None (the service as it is), "redis" (the turn buffer in Redis whatever the store),
        "fifo" (the Redis pool behind a fair gate) or "sqlite-pk" (SQLite without the per-new-session
        counts), all through bench.service_app."""
        out = []
        for label, store, workers, pool, buffer in specs:
            procs = []
            for model in (self.model_fast, self.model_slow):
                tag, env = self._env(store, model, pool, buffer)
                port = free_port()
                target = "bench.service_app:app" if buffer else "app:app"
                cpu = SERVER_CPU if workers == 1 else None
                procs.append(
                    self.fleet.start(
                        f"{tag}-{label.replace(' ', '_')}",
                        hypercorn_argv(target, port, workers),
                        port,
                        cpu,
                        env,
                    )
                )
            out.append(Service(label, store, workers, procs[0], procs[1]))
        for svc in out:
            for proc in (svc.fast, svc.slow):
                wait_http(proc, "/health/readiness", timeout=90)
        return out

    async def settle(self, seconds: float = 0.5) -> None:
        gc.collect()
        await asyncio.sleep(seconds if self.size.store_burst >= 100 else 0.05)

    async def warm_up(self, services: list[Service]) -> None:
        for svc in services:
            tag = f"warm{random.randrange(1 << 30)}"  # noqa: S311

            def make(i: int, tag: str = tag, port: int = svc.fast.port) -> bytes:
                body = orjson.dumps({"session_id": f"{tag}-{i}", "message": "hello"})
                return loadgen.http_request("POST", "/api/v1/chat", port, body)

            await loadgen.request_loop(
                svc.fast.port, make, 8 * svc.workers, 30, max_requests=64 * svc.workers
            )
            await loadgen.stream_phase(8 * svc.workers, self._sse(svc.slow.port), 30)

    def _sse(self, port: int) -> Any:
        tag = f"s{random.randrange(1 << 30)}"  # noqa: S311
        return lambda i: loadgen.sse_stream(port, chat_request(port, f"{tag}-{i}"))

    # loads

    async def turns(self, services: list[Service]) -> dict[str, Turns]:
        """Closed-loop JSON turns on new sessions, the services alternating in rounds."""
        s = self.size
        out = {svc.label: Turns() for svc in services}
        for r in range(s.store_rounds):
            order = services[r % len(services) :] + services[: r % len(services)]
            for svc in order:
                tag = f"t{random.randrange(1 << 30)}"  # noqa: S311

                def make(i: int, tag: str = tag, port: int = svc.fast.port) -> bytes:
                    body = orjson.dumps(
                        {"session_id": f"{tag}-{i}", "message": "Where is my order ORD-1001?"}
                    )
                    return loadgen.http_request("POST", "/api/v1/chat", port, body)

                m = CpuMeter(svc.fast.worker_pids())
                rm = CpuMeter(self.redis.pid) if self.redis is not None else None
                part = await loadgen.request_loop(svc.fast.port, make, s.store_conns, s.store_turn_s)
                got = out[svc.label]
                got.cpu.append(m.percent())
                if rm is not None and (svc.store == "redis" or svc.label == REDIS_BUFFER):
                    got.redis_cpu.append(rm.percent())
                got.rounds.append(part.rps)
                got.latencies += part.latencies
                got.errors += part.errors
                got.elapsed += part.elapsed
                await self.settle()
        return out

    async def burst(self, svc: Service, count: int) -> tuple[loadgen.StreamPhase, float]:
        m = CpuMeter(svc.slow.worker_pids())
        phase = await loadgen.stream_phase(count, self._sse(svc.slow.port), self.size.stream_timeout)
        cpu = m.percent()
        await self.settle(1.0)
        return phase, cpu

    # the sections

    async def run(self, pools: tuple[str, ...], worker_counts: tuple[int, ...] | None = None) -> None:
        """The stores at each of `worker_counts` (default: the size's), then the pool comparison."""
        self.redis = self.start_redis()
        try:
            store_rows: list[list[str]] = []
            figures: dict[tuple[str, int], tuple[Turns, loadgen.StreamPhase]] = {}
            buffer_section = ""
            for workers in self.size.store_workers if worker_counts is None else worker_counts:
                spread = workers > 1
                if spread:  # nothing pinned: every process may use every core
                    set_affinity([self.model_fast, self.model_slow, self.redis], None, self.pin)
                try:
                    with on_cpu(None if spread else CLIENT_CPU, self.pin):
                        got = await self.stores_group(workers)
                        figures.update({(label, workers): v for label, v in got["figures"].items()})
                        store_rows += got["rows"]
                        buffer_section = got.get("buffers", buffer_section)
                finally:
                    if spread:
                        set_affinity([self.model_fast, self.model_slow, self.redis], CLIENT_CPU, self.pin)
                redis_command(self.redis.port, "FLUSHALL")
            if store_rows:
                self.sections.append(self.stores_section(store_rows, figures))
            if buffer_section:
                self.sections.append(buffer_section)
            if pools:
                with on_cpu(CLIENT_CPU, self.pin):
                    self.sections.append(await self.pool_sweep(pools))
                redis_command(self.redis.port, "FLUSHALL")
        finally:
            self.fleet.stop([self.redis])
            self.redis = None

    async def stores_group(self, workers: int) -> dict[str, Any]:
        s = self.size
        specs: list[tuple[str, str, int, int | None, str | None]] = [
            (store, store, workers, None, None) for store in STORES
        ]
        with_buffers = workers == 1
        if with_buffers:
            specs.append((REDIS_BUFFER, "memory", 1, None, "redis"))
        if self.sqlite_pk:
            specs.append((SQLITE_PK, "sqlite", workers, None, "sqlite-pk"))
        say(f"  stores, {workers} worker(s): starting {2 * len(specs)} services ...")
        services = self.start_services(specs)
        try:
            await self.warm_up(services)
            by_label = {svc.label: svc for svc in services}
            stores_only = [by_label[x] for x in STORES] + ([by_label[SQLITE_PK]] if self.sqlite_pk else [])
            turns = await self.turns(stores_only)
            bursts = {}
            for svc in stores_only:
                bursts[svc.label] = await self.burst(svc, s.store_burst)
            rows, figures = [], {}
            for svc in stores_only:
                t, (phase, burst_cpu) = turns[svc.label], bursts[svc.label]
                mem = turns["memory"].rps
                figures[svc.label] = (t, phase)
                rows.append(
                    [
                        svc.label,
                        str(workers),
                        f0(t.rps),
                        ", ".join(f0(x) for x in t.rounds),
                        f"{f1(t.ms(50))} / {f1(t.ms(99))}",
                        ratio(t.rps, mem),
                        f"{f0(statistics.median(t.cpu))}%"
                        + (f" (redis {f0(statistics.median(t.redis_cpu))}%)" if t.redis_cpu else ""),
                        str(t.errors),
                        f1(phase.completion),
                        f"{f1(phase.first_token_ms(50))} / {f1(phase.first_token_ms(99))}",
                        f"{f0(burst_cpu)}%",
                        _failures(phase),
                    ]
                )
            out: dict[str, Any] = {"rows": rows, "figures": figures}
            if with_buffers:
                out["buffers"] = await self.buffers(
                    [by_label["memory"], by_label[REDIS_BUFFER], by_label["redis"]]
                )
            return out
        finally:
            self.fleet.stop([p for svc in services for p in (svc.fast, svc.slow)])

    def stores_section(
        self, rows: list[list[str]], figures: dict[tuple[str, int], tuple[Turns, loadgen.StreamPhase]]
    ) -> str:
        s = self.size
        head = [
            "store",
            "workers",
            f"JSON turns/s (c={s.store_conns})",
            "per round",
            "turn p50 / p99 (ms)",
            "vs memory, same workers",
            "service CPU",
            "errors",
            f"burst of {s.store_burst:,} SSE chats: completed %",
            "first token p50 / p99 (ms)",
            "service CPU in burst",
            "failed chats",
        ]
        out = [
            f"## Session stores: JSON turns/s and a burst of {s.store_burst:,} new SSE chats",
            "",
            f"Turns: {s.store_conns} keep-alive connections, a new session per turn, zero-latency model, "
            f"{s.store_rounds} rounds of {s.store_turn_s:g} s per store, the stores alternating. Burst: "
            f"{s.store_burst:,} new SSE chats opened at once, {s.tokens} tokens {s.token_ms:g} ms apart, "
            f"a stream not done within {s.stream_timeout:g} s counts as not completed. CPU: 100% = one core, "
            "summed over the workers. With 1 worker the service has CPU 0 and the client, model "
            "stand-ins and redis-server CPU 1; with 2 workers on this 2-core machine nothing is "
            "pinned and the client, model stand-ins and redis-server share the cores with the workers. "
            "redis-server: AOF, fsync every second. The memory store with 2 workers keeps sessions per "
            "worker (fine for new sessions per turn; a real deployment needs sqlite or redis there).",
            "",
            table(head, rows),
            "",
        ]
        verdicts = []
        redis1 = figures.get(("redis", 1))
        if redis1 is not None and s.store_burst >= 1000:
            verdicts.append(
                f"- Redis, 1 worker, {s.store_burst:,} new chats at once: "
                f"{f1(redis1[1].completion)}% completed; target >= 99%: "
                f"{at_least(redis1[1].completion, 99, ' pts')}"
            )
        sq2, mem2 = figures.get(("sqlite", 2)), figures.get(("memory", 2))
        if sq2 is not None and mem2 is not None:
            share = sq2[0].rps / mem2[0].rps if mem2[0].rps else float("nan")
            verdicts.append(
                f"- SQLite at 2 workers: {f0(sq2[0].rps)} turns/s = {share:.2f}x memory's {f0(mem2[0].rps)}; "
                f"target >= 0.85x: {at_least(share * 100, 85, ' pts')}"
            )
        if verdicts:
            out += ["Targets:", "", *verdicts, ""]
        return "\n".join(out)

    async def buffers(self, services: list[Service]) -> str:
        """The Redis buffer against the in-process one: SSE x100 first tokens and events/s, saturation,
        resume latency; in-process (memory store), Redis buffer alone (memory store), Redis store."""
        s = self.size
        level = s.buffer_streams
        p99: dict[str, list[float]] = {svc.label: [] for svc in services}
        p50: dict[str, list[float]] = {svc.label: [] for svc in services}
        eps: dict[str, list[float]] = {svc.label: [] for svc in services}
        done: dict[str, list[float]] = {svc.label: [] for svc in services}
        for r in range(s.buffer_rounds):
            order = services[r % len(services) :] + services[: r % len(services)]
            for svc in order:
                phase = await loadgen.stream_phase(level, self._sse(svc.slow.port), s.stream_timeout)
                p99[svc.label].append(phase.first_token_ms(99))
                p50[svc.label].append(phase.first_token_ms(50))
                eps[svc.label].append(phase.events_per_s)
                done[svc.label].append(phase.completion)
                await self.settle()
        sat: dict[str, tuple[float, float]] = {}
        for svc in services:
            tag = f"sat{random.randrange(1 << 30)}"  # noqa: S311

            def start(i: int, tag: str = tag, port: int = svc.fast.port) -> Any:
                return loadgen.sse_stream(port, chat_request(port, f"{tag}-{i}", "go"))

            events, tokens, secs = await loadgen.saturation(
                start, s.saturation_clients, s.buffer_saturation_s
            )
            sat[svc.label] = (events / secs, tokens / secs)
            await self.settle()
        resumes: dict[str, ResumeFigures] = {}
        for svc in services:
            resumes[svc.label] = await resume_latency(
                svc.slow.port, s.resume_finished, s.resume_running, s.resume_concurrency
            )
            await self.settle()
        med = statistics.median
        first = services[0].label
        rows = []
        for svc in services:
            label = svc.label
            res = resumes[label]
            rows.append(
                [
                    {"memory": "in-process (memory store)", "redis": "Redis Stream (redis store)"}.get(
                        label, "Redis Stream (memory store: the buffer alone)"
                    ),
                    f1(med(p99[label])),
                    ratio(med(p99[label]), med(p99[first])),
                    f1(med(p50[label])),
                    f0(med(eps[label])),
                    f1(min(done[label])),
                    f"{f0(sat[label][1])} in {f0(sat[label][0])} events/s",
                    ratio(sat[label][1], sat[first][1]),
                    f"{f1(res.ms('finished', 50))} / {f1(res.ms('finished', 99))}",
                    f"{f1(res.ms('running', 50))} / {f1(res.ms('running', 99))}",
                    str(res.failures),
                ]
            )
        head = [
            "turn buffer",
            f"SSE x{level} first token p99 (ms), median of {s.buffer_rounds}",
            "p99 vs in-process",
            "p50 (ms)",
            f"SSE x{level} events/s",
            "completed %, worst round",
            f"saturation tokens/s ({s.saturation_clients} clients, zero-delay model)",
            "vs in-process",
            f"resume p50 / p99 (ms), ended turn, 1 at a time (n={s.resume_finished})",
            f"resume p50 / p99 (ms), running turn, {s.resume_concurrency} at once (n={s.resume_running})",
            "resume failures",
        ]
        per_round = [
            f"- {svc.label}: first-token p99 per round " + ", ".join(f1(x) for x in p99[svc.label])
            for svc in services
        ]
        return "\n".join(
            [
                "## Turn buffer: in process against Redis Streams (1 worker, same run)",
                "",
                f"SSE x{level}: {level} new SSE chats at once on the 50 ms model, {s.buffer_rounds} rounds, "
                "the services alternating. Saturation: closed-loop SSE chats on the zero-delay model for "
                f"{s.buffer_saturation_s:g} s. Resume: `GET /api/v1/sessions/{{id}}/stream` with "
                f"`Last-Event-ID: <turn_id>:{2}` on a fresh connection, from connect to the first "
                "replayed event (event 3).",
                "",
                table(head, rows),
                "",
                *per_round,
                "",
            ]
        )

    async def pool_sweep(self, pools: tuple[str, ...]) -> str:
        """`pools`: REDIS_MAX_CONNECTIONS values, each N (redis-py's BlockingConnectionPool, as the
        service has it) or fifo:N (bench/redis_pool.py's fair gate in front of a plain pool)."""
        s = self.size
        specs: list[tuple[str, str, int, int | None, str | None]] = [
            (f"pool {n}", "redis", 1, int(n.removeprefix("fifo:")), "fifo" if n.startswith("fifo:") else None)
            for n in pools
        ]
        say(f"  Redis pool sweep: starting {2 * len(specs)} services ...")
        services = self.start_services(specs)
        try:
            await self.warm_up(services)
            turns = await self.turns(services)
            rows = []
            bursts: dict[str, list[loadgen.StreamPhase]] = {svc.label: [] for svc in services}
            for r in range(s.pool_burst_rounds):
                order = services[r % len(services) :] + services[: r % len(services)]
                for svc in order:
                    phase, _ = await self.burst(svc, s.store_burst)
                    bursts[svc.label].append(phase)
            for svc, n in zip(services, pools, strict=True):
                t = turns[svc.label]
                phases = bursts[svc.label]
                rows.append(
                    [
                        str(n),
                        f0(t.rps),
                        ", ".join(f0(x) for x in t.rounds),
                        f"{f1(t.ms(50))} / {f1(t.ms(99))}",
                        f"{f0(statistics.median(t.cpu))}% (redis {f0(statistics.median(t.redis_cpu))}%)",
                        str(t.errors),
                        ", ".join(f1(p.completion) for p in phases),
                        ", ".join(f1(p.first_token_ms(99)) for p in phases),
                        "; ".join(_failures(p) for p in phases),
                    ]
                )
        finally:
            self.fleet.stop([p for svc in services for p in (svc.fast, svc.slow)])
        head = [
            "REDIS_MAX_CONNECTIONS",
            f"JSON turns/s (c={s.store_conns})",
            "per round",
            "turn p50 / p99 (ms)",
            "service CPU",
            "errors",
            f"burst of {s.store_burst:,}: completed % per round",
            "first token p99 (ms) per round",
            "failed chats",
        ]
        return "\n".join(
            [
                "## Redis connection pool size (SESSION_STORE=redis, 1 worker)",
                "",
                f"The same loads as the stores table, one service per pool size; turns in {s.store_rounds} "
                f"alternating rounds, the burst {s.pool_burst_rounds} times each, alternating.",
                "",
                table(head, rows),
                "",
            ]
        )
