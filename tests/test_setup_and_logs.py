"""Set-up and logs: bootstrap refuses an old Python plainly; Hypercorn and the MCP server log JSON lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from msev15 import ROOT
from tests.helpers import eventually_sync, free_port
from tests.mcp_fixtures import make_orders_db, wait_for_port

SECRET = "env-secret-value-7f3a"  # an environment variable no log line may show


@pytest.mark.parametrize("version", ["3.10", "2.7"])
def test_bootstrap_stops_on_an_old_python_with_a_clear_message(tmp_path: Path, version: str) -> None:
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    done = subprocess.run(  # noqa: S603 - our own script
        ["bash", str(ROOT / "scripts" / "bootstrap")],
        env={**os.environ, "PYTHON": str(fake)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"needs Python 3.11 or newer; {fake} is Python {version}" in done.stderr
    assert "PYTHON=/path/to/python3.11" in done.stderr


def test_bootstrap_names_what_the_skipped_tests_need() -> None:
    script = (ROOT / "scripts" / "bootstrap").read_text()
    assert 'are skipped"' not in script and "fail when CI=true" in script


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of the output, each one JSON object (anything else fails the test)."""
    entries = []
    for line in output.splitlines():
        if line.strip():
            entry = orjson.loads(line)
            assert isinstance(entry, dict) and {"timestamp", "level", "module", "message"} <= set(entry), line
            entries.append(entry)
    return entries


def service_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ORDER_DB_PATH": str(tmp_path / "orders.db"),
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "LOG_TO_FILE": "false",
        "LOG_LEVEL": "INFO",
        "LLM_PROVIDER": "offline",
        "MCP_SERVER_URL": "http://127.0.0.1:9/mcp",
        "MCP_AUTOSTART": "false",
        "PYTHONPATH": str(ROOT),
        "UNRELATED_TOKEN": SECRET,
    }


def test_hypercorn_access_log_and_messages_are_json_lines(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "stdout.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(  # noqa: S603 - our own app, fixed arguments
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--config",
                "hypercorn.toml",
                "--bind",
                f"127.0.0.1:{port}",
                "app:app",
            ],
            cwd=ROOT,
            env=service_env(tmp_path),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc)
        response = httpx.get(
            f"http://127.0.0.1:{port}/health", headers={"X-Request-ID": "probe-1"}, timeout=10
        )
        assert response.status_code == 200

        def logged() -> bool:
            return '"hypercorn.access"' in out.read_text()

        eventually_sync(logged, within=10, interval=0.05, what="the access log line")
    finally:
        proc.terminate()
        proc.wait(timeout=40)
    output = out.read_text()
    assert SECRET not in output
    entries = json_lines(output)
    [access] = [e for e in entries if e["module"] == "hypercorn.access"]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)
    assert access["request_id"] == "probe-1" and access["duration_ms"] >= 0 and access["client"]
    assert '"GET /health' in access["message"]
    assert any(e["module"] == "hypercorn.error" and "Running on" in e["message"] for e in entries)
    assert any("banner" in e for e in entries)  # the app's own lines, on the same stream


def test_mcp_server_logs_json_lines(tmp_path: Path) -> None:
    port = free_port()
    env = {**service_env(tmp_path), "ORDER_DB_PATH": str(make_orders_db(tmp_path / "orders.db"))}
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "msev15.mcp_server", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)  # the "listening" line is written before the port opens
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=20)
    entries = json_lines(stdout.decode())
    assert any(f"listening on http://127.0.0.1:{port}/mcp" in e["message"] for e in entries)
    assert not stderr.strip()  # nothing in another format on another stream
