"""The docs inside the repository stand alone and keep up with the code: every path, event, error,
setting and tool is in docs/api.md, and nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from msev15 import ROOT, create_app
from msev15.agent.events import Event
from msev15.settings import Settings
from msev15.tools.clock import builtin_tools
from msev15.tools.mail import mail_tools
from msev15.tools.orders import order_tools
from msev15.web.errors import _HTTP_CODES, AppError
from tests.conftest import make_settings

DOCS = ROOT / "docs"
API = (DOCS / "api.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()
MCP_TOOLS = ("search_products", "get_product", "get_policy", "search_faq")


def test_readme_and_docs_stand_alone() -> None:
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        text = path.read_text()
        assert "../shared" not in text and "API.md" not in text, path.name
    readme = (ROOT / "README.md").read_text()
    assert "(docs/api.md)" in readme and "(docs/operations.md)" in readme


def test_relative_links_in_the_docs_resolve() -> None:
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links {target}"


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    paths = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()}
    for path in sorted(paths - {"/static/{filename}"}):
        assert f"`{path}" in API or f"{path}?" in API or f" {path}`" in API, path


def test_every_setting_event_error_and_tool_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in API, name
    for event in Event.__args__:  # type: ignore[attr-defined]
        assert f"| `{event.__dataclass_fields__['type'].default}` |" in API, event
    for error in {AppError, *_HTTP_CODES.values()}:
        assert f"| {error.status} | `{error.code}` |" in API, error.code
    tools = [*order_tools(None), *mail_tools(None, None), *builtin_tools()]  # type: ignore[arg-type]
    for tool in tools:
        assert f"`{tool.name}`" in API, tool.name
    for name in MCP_TOOLS:
        assert f"`{name}(" in API, name


def test_operations_covers_what_an_operator_needs() -> None:
    for topic in (
        "enableServiceLinks: false",
        "/health/liveness",
        "/health/readiness",
        "draining",
        "HEALTH_CACHE_SECONDS",
        "**SQLite**",
        "**Redis**",
        "**PostgreSQL**",
        "## Upgrades",
        "## Scaling out",
        "noeviction",
        "LOG_TO_FILE=false",
        "GET /metrics",
        "PROMETHEUS_MULTIPROC_DIR",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "docker compose --profile observability up",
    ):
        assert topic in OPERATIONS, topic
