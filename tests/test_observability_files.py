"""The compose `observability` profile and the Grafana dashboard, checked by reading them (Docker cannot run
here) and against the metric names the real service exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from msev15 import ROOT, create_app
from tests.conftest import make_settings
from tests.test_docker_files import compose, pinned

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "msev15.json"
PROFILE = {"prometheus", "grafana", "jaeger"}


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return found


def exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_the_profile_runs_pinned_prometheus_grafana_and_jaeger_on_loopback_only() -> None:
    services = compose()["services"]
    assert {name for name, s in services.items() if "observability" in s.get("profiles", [])} == PROFILE
    for name in PROFILE:
        service = services[name]
        assert pinned(service["image"]), service["image"]
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)  # never on every interface
    for name in ("api", "mcp", "redis"):
        assert "profiles" not in services[name]  # `docker compose up` still runs just these
    for name in ("api", "mcp"):  # tracing stays off unless the endpoint is given
        assert (
            services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
        )
    assert "4318" in [str(p) for p in services["jaeger"]["expose"]]


def test_the_mounted_files_exist_and_agree() -> None:
    services = compose()["services"]
    mounts: dict[str, str] = {}
    for name in PROFILE:
        for volume in services[name].get("volumes", []):
            source, target = str(volume).split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
                mounts[target] = source
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["api:9080"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert Path(ROOT / mounts[path]) == DASHBOARD.parent  # the provider reads where compose mounts
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/datasources.yml").read_text())
    uids = {s["uid"] for s in sources["datasources"]}
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] in uids, panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(panel["title"] for panel in dashboard()["panels"]).lower()
    for topic in ("turns", "first token", "errors", "tool failures", "outbox", "mcp"):
        assert topic in titles, topic
    joined = "\n".join(exprs())
    assert "histogram_quantile(0.5," in joined and "histogram_quantile(0.95," in joined


async def test_every_metric_the_dashboard_queries_is_one_the_service_exposes(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    async with app.test_app() as test_app:
        text = await (await test_app.test_client().get("/metrics")).get_data(as_text=True)
    families = {family.name for family in text_string_to_metric_families(text)}
    for name in sorted({n for expr in exprs() for n in re.findall(r"msev15_[a-z_]+", expr)}):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in families, name
