"""Kubernetes service links: `<SERVICE>_PORT=tcp://10.0.0.7:8000` is read as its port, with a warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msev15 import ROOT, create_app
from msev15.mcp_server.server import parse_args
from msev15.settings import SettingsError, load_settings, service_link_port
from tests.conftest import make_settings
from tests.helpers import free_port
from tests.mcp_fixtures import make_orders_db, wait_for_port

# What a pod sees when Services named server, smtp, redis and mcp share its namespace.
LINKS = {
    "SERVER_PORT": "tcp://10.0.0.5:9080",
    "SERVER_SERVICE_HOST": "10.0.0.5",
    "SERVER_SERVICE_PORT": "9080",
    "SMTP_PORT": "tcp://10.0.0.6:2525",
    "SMTP_PORT_2525_TCP": "tcp://10.0.0.6:2525",
    "SMTP_SERVICE_PORT": "2525",
    "REDIS_PORT": "tcp://10.0.0.8:6379",
    "REDIS_PORT_6379_TCP_ADDR": "10.0.0.8",
    "MCP_PORT": "tcp://10.0.0.7:8000",
    "MCP_SERVICE_HOST": "10.0.0.7",
}


def test_service_link_port_reads_only_links() -> None:
    assert service_link_port("tcp://10.0.0.7:8000") == 8000
    assert service_link_port("tcp://[fd00::7]:8000") == 8000
    assert service_link_port(" tcp://mcp.default.svc:8000/ ") == 8000
    for other in ("8000", "udp://10.0.0.7:53", "tcp://10.0.0.7", "http://10.0.0.7:8000", ""):
        assert service_link_port(other) is None


def test_links_become_ports_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LINKS.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(_env_file=None)
    assert (settings.server_port, settings.smtp_port) == (9080, 2525)
    assert len(settings.start_warnings) == 2
    assert all("Kubernetes service link" in w and "enableServiceLinks" in w for w in settings.start_warnings)
    assert settings.start_warnings[0].startswith("SERVER_PORT=tcp://10.0.0.5:9080")
    # A plain port is no link and says nothing; garbage still stops the start naming the variable.
    monkeypatch.setenv("SERVER_PORT", "9081")
    monkeypatch.setenv("SMTP_PORT", "587")
    plain = load_settings(_env_file=None)
    assert plain.server_port == 9081 and plain.start_warnings == []
    monkeypatch.setenv("SERVER_PORT", "tcp://10.0.0.5")
    with pytest.raises(SettingsError, match="SERVER_PORT"):
        load_settings(_env_file=None)


async def test_the_app_starts_and_logs_the_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SMTP_PORT", LINKS["SMTP_PORT"])
    app = create_app(make_settings(tmp_path))
    with caplog.at_level(logging.WARNING, logger="msev15"):
        async with app.test_app() as test_app:
            assert (await test_app.test_client().get("/health/readiness")).status_code == 200
    assert any("SMTP_PORT=tcp://10.0.0.6:2525" in r.getMessage() for r in caplog.records)


def test_the_mcp_server_reads_its_link(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_PORT", LINKS["MCP_PORT"])
    args = parse_args([])
    assert args.port == 8000 and "MCP_PORT=tcp://10.0.0.7:8000" in args.start_warnings[0]
    monkeypatch.setenv("MCP_PORT", "eighty")
    with pytest.raises(SystemExit, match="MCP_PORT"):
        parse_args([])


def test_the_mcp_server_process_serves_on_the_linked_port(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **LINKS,
        "MCP_PORT": f"tcp://127.0.0.1:{port}",
        "PYTHONPATH": str(ROOT),
        "ORDER_DB_PATH": str(make_orders_db(tmp_path / "orders.db")),
    }
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "msev15.mcp_server", "--host", "127.0.0.1"],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert f"MCP_PORT=tcp://127.0.0.1:{port}" in output.decode()
