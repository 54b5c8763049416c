"""bench/client_cpu.py --api at a tiny size: the Chat Completions vs Responses comparison cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def test_client_cpu_compares_the_model_apis() -> None:
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "bench" / "client_cpu.py"), "--quick", "--json"]
        + ["--transports", "lean", "--api", "chat,responses"],
        cwd=str(ROOT),
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout.splitlines()[-1])
    for load in result["loads"].values():
        assert set(load["cpu_ms"]) == {"lean", "lean+responses"}
        assert all(0 < ms < 1000 for ms in load["cpu_ms"].values())
