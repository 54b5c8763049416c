"""Settings: fail fast naming the variable, mask secrets, read the environment."""

from __future__ import annotations

import pytest

from msev15.settings import SettingsError, load_settings


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="SERVER_PORT"):
        load_settings(_env_file=None)


def test_bad_choice_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSION_STORE", "floppy")
    with pytest.raises(SettingsError, match="SESSION_STORE"):
        load_settings(_env_file=None)


def test_bad_api_keys_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "justakey")
    with pytest.raises(SettingsError, match="API_KEYS"):
        load_settings(_env_file=None)


def test_bad_trusted_proxy_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.1,not-an-address")
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        load_settings(_env_file=None)


def test_environment_and_dotenv(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    env = tmp_path / ".env"
    env.write_text("OPENAI_MODEL=from-dotenv\nRATE_LIMIT_PER_MINUTE=7\n")
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "9")
    settings = load_settings(_env_file=str(env))
    assert settings.openai_model == "from-dotenv"
    assert settings.rate_limit_per_minute == 9  # the environment wins over .env


def test_masked_form_hides_secrets() -> None:
    settings = load_settings(
        _env_file=None,
        api_keys="k-very-secret:tenant-a",
        openai_api_key="sk-secret",
        sender_password="pw-secret",
        redis_url="redis://user:redispw@127.0.0.1:6379/0",
    )
    masked = str(settings.masked())
    for secret in ("k-very-secret", "sk-secret", "pw-secret", "redispw"):
        assert secret not in masked
    assert settings.masked()["OPENAI_API_KEY"] == "***"
    assert "sk-secret" not in repr(settings)
    assert settings.api_key_map == {"k-very-secret": "tenant-a"}


def test_defaults_match_the_contract() -> None:
    settings = load_settings(_env_file=None)
    assert settings.server_port == 9080
    assert settings.mcp_server_url == "http://localhost:8000/mcp"
    assert str(settings.order_db_path) == "data/orders.db"
    assert str(settings.session_db_path) == "data/sessions.db"
    assert settings.max_request_bytes == 64 * 1024
    assert settings.require_confirmation is True and settings.approval_ttl_seconds == 900
    assert settings.session_store == "memory" and settings.openai_model == "gpt-4o"


def test_env_example_lists_every_setting_with_its_default() -> None:
    from pathlib import Path

    from msev15.settings import Settings

    example = Path(__file__).resolve().parent.parent / ".env.example"
    names = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and line[0].isalpha()}
    assert names == {n.upper() for n in Settings.model_fields}
    assert load_settings(_env_file=str(example)).model_dump() == load_settings(_env_file=None).model_dump()


def test_database_url_is_postgresql_secret_and_logged_without_credentials() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(_env_file=None, database_url="mysql://u:p@db/shop")
    assert load_settings(_env_file=None, database_url="").database_url is None  # blank is unset
    settings = load_settings(_env_file=None, database_url="postgresql://shop:pg-secret@db.internal:5432/shop")
    assert settings.database_label == "postgresql://db.internal:5432/shop"
    assert settings.masked()["DATABASE_URL"] == "***" and "pg-secret" not in str(settings.masked())
    assert "pg-secret" not in repr(settings)
    assert load_settings(_env_file=None).database_label == "data/orders.db"
    with pytest.raises(SettingsError, match="DB_POOL_SIZE"):
        load_settings(_env_file=None, db_pool_size=0)
