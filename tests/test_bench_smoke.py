"""The benchmark at a tiny size, so bench/ cannot rot (the real run is `python bench/run.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_run_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table == done.stdout
    for figure in (
        "/health requests/s",
        "JSON chat turn p50 (ms), concurrency 1",
        "session history read p99",
        "saturation SSE tokens/s",
        "SSE x5: completed %",
        "WebSocket x5: completed %",
        "idle WebSockets",
        "idle sessions",
    ):
        assert figure in table, figure
    # every stream of the tiny run completes, on the service and on the bare app alike
    for line in table.splitlines():
        if "completed %" in line:
            cells = [c.strip() for c in line.split("|")]
            assert cells[2] == cells[3] == "100.0", line
    assert "no data" not in table
