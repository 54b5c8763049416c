"""The benchmark at a tiny size, so bench/ cannot rot (the real run is `python bench/run.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parent.parent


def run_bench(out: Path, *flags: str, timeout: float) -> str:
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", *flags, "--out", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table == done.stdout
    assert "no data" not in table
    return table


def test_bench_quick_run_writes_the_table(tmp_path: Path) -> None:
    table = run_bench(tmp_path / "latest.md", timeout=90)
    for figure in (
        "/health requests/s",
        "JSON chat turn p50 (ms), concurrency 1",
        "session history read p99",
        "saturation SSE tokens/s",
        "SSE x5: completed %",
        "WebSocket x5: completed %",
        "resume latency p50 / p99 (ms), an ended turn",
        "resume latency p50 / p99 (ms), a running turn",
        "idle WebSockets",
        "idle sessions",
        "turn buffer: memory per active turn",
        "turn buffer: memory per ended turn",
    ):
        assert figure in table, figure
    # every stream of the tiny run completes, on the service and on the bare app alike
    for line in table.splitlines():
        if "completed %" in line:
            cells = [c.strip() for c in line.split("|")]
            assert cells[2] == cells[3] == "100.0", line
    # every resume found its turn and replayed the event after its position
    assert "resume failures" not in table
    for line in table.splitlines():
        if line.startswith("| resume latency"):
            assert "(4 of 4)" in line, line


def test_bench_quick_stores_section(tmp_path: Path) -> None:
    """`--stores-only` with a Redis pool comparison: every store at 1 and 2 workers, real redis-server."""
    require_binary("redis-server", "redis-server")
    table = run_bench(tmp_path / "stores.md", "--stores-only", "--redis-pools", "8", timeout=240)
    for heading in (
        "## Session stores: JSON turns/s and a burst of 10 new SSE chats",
        "## Turn buffer: in process against Redis Streams",
        "## Redis connection pool size",
        "SQLite at 2 workers:",
    ):
        assert heading in table, heading
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    ]
    stores = {(cells[0], cells[1]) for cells in rows if len(cells) > 1}
    for store in ("memory", "sqlite", "redis"):
        for workers in ("1", "2"):
            assert (store, workers) in stores, (store, workers)
    # the tiny burst completes on every store and every pool size, and no turn failed
    for cells in rows:
        if cells[0] in ("memory", "sqlite", "redis"):
            assert cells[7] == "0" and cells[8] == "100.0" and cells[11] == "none", cells
        if cells[0] == "8":
            assert cells[5] == "0" and cells[6] == "100.0" and cells[8] == "none", cells


def test_bench_quick_orders_db_section(tmp_path: Path) -> None:
    """`--orders-db-only`: PostgreSQL against SQLite, every turn's tool ran (else the run notes it)."""
    from tests.postgres_server import PACKAGE, server_bin_dir

    require_binary(server_bin_dir() / "pg_ctl", PACKAGE)
    table = run_bench(tmp_path / "orders-db.md", "--orders-db-only", timeout=120)
    for figure in (
        "get_order JSON turn p50 (ms), c=1",
        "get_order turn: PostgreSQL minus SQLite",
        "create_order turns/s, c=4",
    ):
        assert figure in table, figure
    assert "orders-db:" not in table and "orders-db errors" not in table  # every turn ran its tool


def test_bench_ab_trees_compares_checkouts(tmp_path: Path) -> None:
    """`bench/ab_trees.py` at a tiny size: this checkout against itself, one round of 3 streams."""
    done = subprocess.run(  # noqa: S603 - our own script
        [
            sys.executable,
            str(ROOT / "bench" / "ab_trees.py"),
            str(ROOT),
            str(ROOT),
            "--rounds",
            "1",
            "--streams",
            "3",
        ],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = [line for line in done.stderr.splitlines() if line.startswith("- ")]
    assert len(summary) == 4, done.stderr[-3000:]  # two trees, SSE and WebSocket each
    assert "completed only" not in done.stderr
