"""Client CPU per streamed model call, for each HTTP transport under the model client, in one run.

`python bench/client_cpu.py [--transports lean,aiohttp] [--api chat,responses] [--quick] [--json]`:
starts the raw model stand-in (`tests/openai_server.py --raw`) on a free 127.0.0.1 port, then runs
the service's own model client (`OpenAIChatModel`, or with `--api` also `OpenAIResponsesModel`, shown as
`TRANSPORT+responses`; the service's system prompt and tool specs) against it on each
transport in turn, rounds alternating so drifting background load hits every transport alike,
and reports this process's CPU time (user + system, all threads) per completed call. The model
server runs on CPU 1 and this client on CPU 0 when the machine has two.

Two loads: `burst` (one call at a time, the whole answer in one network write) prices the
request side; `paced` (8 calls at once, tokens 1 ms apart, so each arrives in its own read, as
from a real model) prices reading the stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Load:
    name: str
    concurrency: int
    delay_ms: float


LOADS = (Load("burst", 1, 0.0), Load("paced", 8, 1.0))
TOKENS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def model_server(delay_ms: float, cpu: int | None) -> Iterator[int]:
    """The raw stand-in in its own process group, stopped by PID however the run ends."""
    port = _free_port()
    argv = [sys.executable, "-m", "tests.openai_server", "--raw", "--tokens", str(TOKENS)]
    argv += ["--delay-ms", str(delay_ms), "--port", str(port)]

    def _pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    popen = subprocess.Popen(  # noqa: S603 - our own fixed command
        argv, cwd=str(ROOT), stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pin
    )
    try:
        _wait_up(port, popen)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=5)


def _wait_up(port: int, popen: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and popen.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the model stand-in did not come up on port {port}")


def service_request() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages and tool specs of a first turn, as the service sends them."""
    from msev15.agent.loop import INSTRUCTIONS
    from msev15.tools.clock import builtin_tools
    from msev15.tools.mail import mail_tools
    from msev15.tools.orders import order_tools
    from msev15.tools.registry import ToolRegistry

    registry = ToolRegistry(15.0, 8000)
    registry.register_all(builtin_tools())
    registry.register_all(order_tools(None))  # type: ignore[arg-type]  # only the specs are used
    registry.register_all(mail_tools(None, None))  # type: ignore[arg-type]
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Where is my order ORD-1001?"},
    ]
    return messages, registry.specs()


def build_model(variant: str, port: int) -> Any:
    """`TRANSPORT` (Chat Completions) or `TRANSPORT+responses` (the Responses API)."""
    import openai

    from bench.model_transports import TRANSPORTS
    from msev15.agent.openai_chat import OpenAIChatModel
    from msev15.agent.openai_responses import OpenAIResponsesModel

    transport, _, api = variant.partition("+")

    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="bench",
        max_retries=0,
        timeout=30.0,
        http_client=TRANSPORTS[transport](),
    )
    kind = OpenAIResponsesModel if api == "responses" else OpenAIChatModel
    return kind(client, "gpt-4o", "openai", max_retries=0)


async def _calls(model: Any, request: tuple[list[Any], list[Any]], count: int, concurrency: int) -> int:
    """`count` streamed calls, `concurrency` at a time, each read to its end; returns the completed ones."""
    from msev15.agent.model import ModelFinish

    messages, tools = request
    left = count
    done = 0

    async def worker() -> None:
        nonlocal left, done
        while left > 0:
            left -= 1
            async for event in model.stream(messages, tools):
                if isinstance(event, ModelFinish):
                    done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def measure(transport: str, port: int, load: Load, calls: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call on a fresh client, after a warm-up that fills its pool."""
    model = build_model(transport, port)
    request = service_request()
    try:
        await _calls(model, request, max(load.concurrency * 4, 20), load.concurrency)
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        done = await _calls(model, request, calls, load.concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await model.close()
    if done != calls:
        raise RuntimeError(f"{transport}: {calls - done} of {calls} calls did not finish")
    return 1000 * cpu / calls, 1000 * wall / calls


def run(transports: list[str], calls: int, rounds: int, pin: bool) -> dict[str, Any]:
    """Median per-call CPU (and wall) over the rounds, per load and transport; rounds alternate order."""
    if pin:
        os.sched_setaffinity(0, {0})
    out: dict[str, Any] = {"calls": calls, "rounds": rounds, "tokens": TOKENS, "loads": {}}
    for load in LOADS:
        cpu: dict[str, list[float]] = {t: [] for t in transports}
        wall: dict[str, list[float]] = {t: [] for t in transports}
        with model_server(load.delay_ms, 1 if pin else None) as port:
            for i in range(rounds):
                for transport in transports if i % 2 == 0 else transports[::-1]:
                    c, w = asyncio.run(measure(transport, port, load, calls))
                    cpu[transport].append(c)
                    wall[transport].append(w)
        out["loads"][load.name] = {
            "concurrency": load.concurrency,
            "delay_ms": load.delay_ms,
            "cpu_ms": {t: statistics.median(v) for t, v in cpu.items()},
            "cpu_ms_rounds": cpu,
            "wall_ms": {t: statistics.median(v) for t, v in wall.items()},
        }
    return out


def table(result: dict[str, Any]) -> str:
    transports = list(next(iter(result["loads"].values()))["cpu_ms"])
    first = transports[0]
    lines = [
        f"client CPU per streamed call (ms; median of {result['rounds']} rounds of {result['calls']} calls, "
        f"{result['tokens']} tokens each)",
        "",
        "| load | "
        + " | ".join(transports)
        + " | "
        + " | ".join(f"{t}/{first}" for t in transports[1:])
        + " |",
        "|---" * (2 * len(transports)) + "|",
    ]
    for name, load in result["loads"].items():
        cpu = load["cpu_ms"]
        cells = [f"{cpu[t]:.3f}" for t in transports] + [f"{cpu[t] / cpu[first]:.2f}" for t in transports[1:]]
        label = f"{name} (c={load['concurrency']}, {load['delay_ms']:g} ms/token)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="lean,aiohttp", help="comma-separated, from model_transports")
    parser.add_argument("--api", default="chat", help="comma-separated: chat, responses")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="a tiny size (seconds): for the smoke test")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    calls, rounds = (20, 1) if args.quick else (args.calls, args.rounds)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2  # bench/run.py starts this pinned to one CPU
    apis = args.api.split(",")
    variants = [t if api == "chat" else f"{t}+{api}" for api in apis for t in args.transports.split(",")]
    result = run(variants, calls, rounds, pin)
    sys.stdout.write(orjson.dumps(result).decode() + "\n" if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
