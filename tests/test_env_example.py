""".env.example read the way Docker reads an env file: every value literal, and the service starts on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from msev15 import ROOT, create_app
from msev15.settings import Settings, load_settings
from msev15.web.services import EXTENSION_KEY, Services


def docker_env_file(path: Path) -> dict[str, str]:
    """The variables `docker run --env-file` sets (docker/cli's parser): a line is trimmed on the left;
    blank lines and lines starting with `#` are skipped; everything after the first `=` is the value,
    literally (quotes, spaces and `#` included); a name must not contain whitespace."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: {raw!r} has no '=' (Docker would copy it from the host)"
        assert not re.search(r"\s", name), f"{path.name}:{number}: variable {name!r} contains whitespace"
        variables[name] = value
    return variables


EXAMPLE = docker_env_file(ROOT / ".env.example")


def test_every_value_is_meant_literally() -> None:
    assert set(EXAMPLE) == {name.upper() for name in Settings.model_fields}
    for name, value in EXAMPLE.items():
        assert "#" not in value, f"{name}: an inline comment would become part of the value"
        assert value == value.strip(), f"{name}: surrounding spaces would be part of the value"
        assert not value.startswith(("'", '"')), f"{name}: Docker keeps quotes as part of the value"


def test_placeholders_do_not_switch_the_provider_or_turn_features_on() -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT",
                 "AZURE_AI_PROJECT_ENDPOINT", "API_KEYS", "SMTP_SERVER", "SENDER_PASSWORD",
                 "CLIENT_TOKEN_SECRET"):  # fmt: skip
        assert EXAMPLE[name] == "", name


def test_the_values_docker_passes_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EXAMPLE:
        monkeypatch.delenv(name, raising=False)
    defaults = load_settings(_env_file=None).model_dump()
    for name, value in EXAMPLE.items():
        monkeypatch.setenv(name, value)
    assert load_settings(_env_file=None).model_dump() == defaults


async def test_the_service_starts_on_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As `docker run --env-file .env.example` would start it: offline model, outbox mail, open API."""
    monkeypatch.chdir(tmp_path)  # the relative defaults (./data, ./logs) land here
    for name, value in EXAMPLE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MCP_SERVER_URL", "http://127.0.0.1:9/mcp")  # not whatever may listen on :8000
    app = create_app()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        found: Services = app.extensions[EXTENSION_KEY]
        assert found.model.provider == "offline" and found.settings.server_port == 9080
        ready = await client.get("/health/readiness")
        body = await ready.get_json()
        assert ready.status_code == 200 and body["checks"]["smtp"] == "outbox only", body
        chat = await client.post("/api/v1/chat", json={"session_id": "s1", "message": "hello"})
        assert chat.status_code == 200
        page = await client.get("/")
        assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"]
    assert (tmp_path / "data" / "orders.db").exists()
