"""Structured logs: JSON lines with request context, a start banner, and no secrets anywhere."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from msev15 import create_app
from tests.conftest import make_settings

SECRETS = ("sk-very-secret-value", "k-tenant-secret", "smtp-password-value")


async def test_banner_and_request_context_in_json_lines_without_secrets(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "app.log"
    settings = make_settings(
        tmp_path,
        log_to_file=True,
        log_file_path=log_file,
        log_level="INFO",
        llm_provider="openai",
        openai_base_url="http://127.0.0.1:9/v1",  # nothing listens: the turn fails and says so in the log
        openai_api_key=SECRETS[0],
        api_keys=f"{SECRETS[1]}:acme",
        sender_password=SECRETS[2],
        model_max_retries=0,
    )
    app = create_app(settings)
    async with app.test_app():
        response = await app.test_client().post(
            "/api/v1/chat",
            json={"session_id": "s-1", "message": "hello"},
            headers={"Authorization": f"Bearer {SECRETS[1]}", "X-Request-ID": "req-42"},
        )
        assert response.status_code == 503
        assert SECRETS[1] not in (await response.get_data(as_text=True))
    for handler in logging.getLogger().handlers:
        handler.flush()

    raw = log_file.read_text()
    for secret in SECRETS:
        assert secret not in raw
    entries = [orjson.loads(line) for line in raw.splitlines()]  # every line is one JSON object
    banner = next(e for e in entries if "banner" in e)
    assert banner["banner"]["model_provider"] == "openai" and banner["banner"]["version"]
    assert banner["banner"]["database"] == str(tmp_path / "orders.db")
    assert banner["banner"]["email"].startswith("outbox only")
    assert banner["settings"]["OPENAI_API_KEY"] == "***" and banner["settings"]["API_KEYS"] == "***"
    failure = next(e for e in entries if e["message"].startswith("model unavailable"))
    assert failure["level"] == "WARNING" and failure["module"] == "msev15.agent.loop"
    assert (failure["request_id"], failure["session_id"], failure["tenant_id"]) == ("req-42", "s-1", "acme")
    assert "client_ip" in failure and failure["timestamp"]
    assert "hello" not in raw  # message bodies are not logged above DEBUG
