"""Two checkouts of the service, A/B: first tokens at 100 streams over bare, and the service's CPU.

    git worktree add /tmp/before <commit>    # or a clone of this repository, checked out there
    python bench/ab_trees.py /tmp/before .   # every tree runs on this checkout's Python

The model stand-in, the bare app and one service per tree start as in `bench/run.py` (servers on
CPU 0, the client and the model on CPU 1); then, for each round, SSE and WebSocket phases of
`--streams` new chats (20 tokens 50 ms apart): the bare endpoint first, then every tree, in an
order that alternates between rounds. Per tree it prints each round's first-token p99 over the
bare phase just before it and the worker's CPU seconds for the phase, then the medians: a change
to the per-turn path shows in both, measured under the same conditions in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.common import (  # noqa: E402
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    Fleet,
    Proc,
    cpu_seconds,
    cpu_set,
    free_port,
    hypercorn_argv,
    say,
    service_env,
    wait_http,
)

KINDS = ("SSE", "WebSocket")


def start_tree(fleet: Fleet, tree: Path, model_port: int, workdir: Path, tag: str) -> Proc:
    """The service of one checkout, from that checkout (its own `app:app` and hypercorn.toml)."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "hypercorn",
        "--config",
        str(tree / "hypercorn.toml"),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    return fleet.start(
        f"service-{tag}",
        [*argv, "app:app"],
        port,
        SERVER_CPU,
        service_env(model_port, workdir, tag),
        cwd=tree,
    )


async def compare(services: dict[str, Proc], bare: Proc, rounds: int, streams: int) -> None:
    os.sched_setaffinity(0, cpu_set(CLIENT_CPU))
    names = list(services)
    over: dict[tuple[str, str], list[float]] = {(n, k): [] for n in names for k in KINDS}
    cpu: dict[tuple[str, str], list[float]] = {(n, k): [] for n in names for k in KINDS}
    for name in names:  # unmeasured: imports, pools and connections warm in every tree
        for kind in KINDS:
            await loadgen.stream_phase(streams, loadgen.service_chats(kind, services[name].port), 15)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for kind in KINDS:
            base = await loadgen.stream_phase(streams, loadgen.bare_streams(kind, bare.port, 20, 50), 15)
            await asyncio.sleep(0.5)  # settle: the phase's connections close
            for name in order:
                pids = services[name].worker_pids()
                before = sum(cpu_seconds(p) for p in pids)
                phase = await loadgen.stream_phase(
                    streams, loadgen.service_chats(kind, services[name].port), 15
                )
                cpu[(name, kind)].append(sum(cpu_seconds(p) for p in pids) - before)
                over[(name, kind)].append(phase.first_token_ms(99) - base.first_token_ms(99))
                if phase.completion < 100:
                    say(f"round {r}: {name} {kind} completed only {phase.completion:.1f}%")
                await asyncio.sleep(0.5)
        say(
            f"round {r}: "
            + "; ".join(
                f"{n} {k} {over[(n, k)][-1]:+.0f} ms, {cpu[(n, k)][-1]:.2f} s" for n in names for k in KINDS
            )
        )
    say(f"{streams} streams, {rounds} rounds: first-token p99 over bare (median, max); worker CPU per phase")
    for name in names:
        for kind in KINDS:
            v, c = over[(name, kind)], statistics.median(cpu[(name, kind)])
            say(f"- {name} {kind}: {statistics.median(v):+.0f} ms (max {max(v):+.0f}), CPU {c:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts of the service to compare")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 CPUs: the servers on one, the client and the model stand-in on the other")
    workdir = Path(tempfile.mkdtemp(prefix="ab-trees-"))
    fleet = Fleet(workdir, pin=True)
    try:
        model_port, bare_port = free_port(), free_port()
        model = fleet.start(
            "model",
            [
                PYTHON,
                "-m",
                "tests.openai_server",
                "--raw",
                "--tokens",
                "20",
                "--delay-ms",
                "50",
                "--port",
                str(model_port),
            ],
            model_port,
            CLIENT_CPU,
        )
        bare = fleet.start("bare", hypercorn_argv("bench.bare_app:app", bare_port), bare_port, SERVER_CPU)
        services = {
            f"{i}:{tree.resolve().name}": start_tree(fleet, tree.resolve(), model_port, workdir, f"t{i}")
            for i, tree in enumerate(args.trees)
        }
        wait_http(model, "/v1/models")
        for proc in [bare, *services.values()]:
            wait_http(proc, "/health")
        asyncio.run(compare(services, bare, args.rounds, args.streams))
    finally:
        fleet.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
