"""One settings object, read from the environment and `.env`, validated at start."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

VERSION = "0.1.0"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: static/, templates/, hypercorn.toml
DEFAULT_MCP_URL = "http://localhost:8000/mcp"
DEFAULT_AZURE_API_VERSION = "2024-10-21"  # the current GA of Azure OpenAI's dated inference API


def is_postgres_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("postgresql", "postgres")


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Every knob of the service; names match API.md and `.env.example`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Server
    server_host: str = "0.0.0.0"
    server_port: int = Field(9080, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_to_file: bool = True
    log_file_path: Path = Path("./logs/app.log")
    log_max_size_mb: int = Field(10, ge=1, le=10_000)
    log_backup_count: int = Field(5, ge=0, le=1000)
    enable_cors: bool = False
    cors_origins: str = "*"
    max_request_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024)
    health_cache_seconds: float = Field(5.0, ge=0, le=300)
    enable_metrics: bool = True  # GET /metrics (Prometheus); tracing is the standard OTEL_* variables

    # Security
    api_keys: SecretStr | None = None
    trusted_proxies: str = ""
    enable_rate_limiting: bool = True
    rate_limit_per_minute: int = Field(120, ge=1, le=1_000_000)

    # End users
    client_token_secret: SecretStr | None = None
    client_token_ttl_seconds: int = Field(86_400, ge=60, le=604_800)
    public_chat: bool | None = None  # None: on exactly when API_KEYS is unset
    public_chat_tenant: str = Field("default", pattern=r"^[A-Za-z0-9._:@-]{1,255}$")
    frame_ancestors: str = "'self'"

    # Model
    llm_provider: Literal["auto", "offline", "openai", "azure"] = "auto"
    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o"
    azure_openai_api_key: SecretStr | None = None
    azure_ai_project_endpoint: str | None = None
    azure_openai_endpoint: str | None = None
    azure_openai_responses_deployment_name: str = "gpt-4o"
    openai_api_version: str | None = None  # None: DEFAULT_AZURE_API_VERSION (chat) or "v1" (responses)
    azure_openai_api_version: str | None = None  # deprecated alias of OPENAI_API_VERSION
    model_api: Literal["chat", "responses"] = "chat"
    model_timeout_seconds: float = Field(60.0, gt=0, le=600)
    model_max_retries: int = Field(3, ge=0, le=10)
    model_retry_base_seconds: float = Field(0.5, ge=0, le=30)
    model_temperature: float = Field(0.2, ge=0, le=2)

    # Agent limits
    max_tool_rounds: int = Field(8, ge=1, le=50)
    tool_timeout_seconds: float = Field(15.0, gt=0, le=600)
    tool_result_max_chars: int = Field(8000, ge=200, le=1_000_000)
    turn_timeout_seconds: float = Field(120.0, gt=0, le=3600)
    model_context_chars: int = Field(48_000, ge=2000, le=10_000_000)
    require_confirmation: bool = True
    approval_ttl_seconds: int = Field(900, ge=10, le=7 * 86400)

    # Sessions
    session_store: Literal["memory", "sqlite", "redis"] = "memory"
    session_db_path: Path = Path("./data/sessions.db")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_max_connections: int = Field(256, ge=1, le=10_000)  # bench: no burst lost at 256
    session_store_wait_seconds: float = Field(
        10.0, gt=0, le=120
    )  # bench: 5 s lost 7-9% of a 1,000-chat burst
    resume_buffer_seconds: int = Field(300, ge=1, le=86_400)
    resume_buffer_max_mb: int = Field(32, ge=1, le=65_536)  # per worker, finished turns (memory buffer)
    session_ttl_seconds: int = Field(86_400, ge=1, le=365 * 86400)
    max_sessions: int = Field(100_000, ge=1, le=10_000_000)
    max_sessions_per_tenant: int = Field(10_000, ge=1, le=10_000_000)
    max_messages_per_session: int = Field(200, ge=2, le=100_000)

    # Orders (with the email outbox and the audit log): a SQLite file, or PostgreSQL when
    # DATABASE_URL is set (shared by every instance)
    order_db_path: Path = Path("./data/orders.db")
    database_url: SecretStr | None = None
    db_pool_size: int = Field(10, ge=1, le=1000)
    seed_demo_data: bool = True
    db_busy_timeout_ms: int = Field(5000, ge=0, le=600_000)

    # Email
    smtp_server: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_use_tls: bool = True
    sender_email: str = "support@example.com"
    sender_password: SecretStr | None = None
    sender_name: str = "Customer Support"
    email_allowed_recipients: str = ""
    outbox_dir: Path = Path("./data/outbox")
    smtp_timeout_seconds: float = Field(10.0, gt=0, le=300)
    smtp_retry_base_seconds: float = Field(2.0, gt=0, le=3600)
    smtp_retry_max_seconds: float = Field(600.0, gt=0, le=86400)

    # MCP
    mcp_server_url: str = DEFAULT_MCP_URL
    mcp_server_required: bool = False
    mcp_autostart: bool = True
    mcp_timeout_seconds: float = Field(10.0, gt=0, le=600)
    mcp_reconnect_seconds: float = Field(5.0, gt=0, le=3600)

    # What start-up should warn about (logged with the banner, once logging is set up).
    _start_warnings: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _service_links(cls, data: Any, handler: Any) -> Any:
        """Kubernetes puts `<SERVICE>_PORT=tcp://10.0.0.7:8000` into every pod of the namespace for
        each Service; for a Service named `server` or `smtp` that lands on our port settings. Read it
        as its port, and say so at start (`enableServiceLinks: false` in the pod spec avoids it)."""
        warnings = []
        if isinstance(data, dict):
            for name in PORT_SETTINGS:
                value = data.get(name)
                if not isinstance(value, str) or (port := service_link_port(value)) is None:
                    continue
                warnings.append(service_link_warning(name.upper(), value, port))
                data = {**data, name: port}
        settings = handler(data)
        if isinstance(settings, Settings):
            settings._start_warnings = warnings
        return settings

    @field_validator(
        "openai_base_url",
        "azure_ai_project_endpoint",
        "azure_openai_endpoint",
        "smtp_server",
        "openai_api_version",
        "azure_openai_api_version",
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator(
        "api_keys",
        "openai_api_key",
        "azure_openai_api_key",
        "sender_password",
        "client_token_secret",
        "public_chat",
        "database_url",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("client_token_secret")
    @classmethod
    def _secret_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (HS256 keys shorter than the hash are guessable)")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_postgres_url(value.get_secret_value()):
            raise ValueError("must be a PostgreSQL URL: postgresql://user:password@host:port/database")
        return value

    @field_validator("frame_ancestors")
    @classmethod
    def _one_header_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n;,"):
            raise ValueError("must be CSP source expressions separated by spaces")
        return value.strip() or "'self'"

    @field_validator("api_keys")
    @classmethod
    def _api_keys_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the bad entry
        return value

    # Derived views -----------------------------------------------------------------

    @property
    def database_label(self) -> str:
        """Where orders live, fit for logs: the file, or the PostgreSQL server without credentials."""
        if self.database_url is None:
            return str(self.order_db_path)
        parts = urlsplit(self.database_url.get_secret_value())
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"

    @property
    def start_warnings(self) -> list[str]:
        """Warnings about the configuration itself, for the start log."""
        return list(self._start_warnings)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def api_key_map(self) -> dict[str, str]:
        """API key -> tenant; empty means auth is off."""
        return parse_api_keys(self.api_keys.get_secret_value()) if self.api_keys else {}

    @property
    def public_chat_enabled(self) -> bool:
        """Anonymous visitors may get a token: by default exactly when no API keys are configured."""
        return self.public_chat if self.public_chat is not None else self.api_keys is None

    @property
    def token_secret_path(self) -> Path:
        """Where the per-host client-token secret is kept when CLIENT_TOKEN_SECRET is unset."""
        return self.order_db_path.parent / "client_token_secret"

    @property
    def allowed_recipient_patterns(self) -> list[str]:
        return [p.strip().lower() for p in self.email_allowed_recipients.split(",") if p.strip()]

    @property
    def model_provider(self) -> Literal["offline", "openai", "azure"]:
        """The provider API.md's selection rules pick."""
        if self.llm_provider != "auto":
            return self.llm_provider
        if self.azure_ai_project_endpoint or self.azure_openai_endpoint:
            return "azure"  # with AZURE_OPENAI_API_KEY, or keyless through Microsoft Entra ID
        if self.openai_base_url or self.openai_api_key:
            return "openai"
        return "offline"

    @property
    def azure_api_version(self) -> str:
        """OPENAI_API_VERSION (or the deprecated AZURE_OPENAI_API_VERSION); unset, the current GA for the
        model API: the dated GA for Chat Completions, Azure's versionless `v1` API for Responses (the
        dated API has Responses only in preview versions)."""
        explicit = self.openai_api_version or self.azure_openai_api_version
        if explicit:
            return explicit
        return "v1" if self.model_api == "responses" else DEFAULT_AZURE_API_VERSION

    def masked(self) -> dict[str, Any]:
        """Printable form: every secret replaced, URLs stripped of credentials."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name.upper()] = "***" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                out[name.upper()] = _mask_url(value)
            elif isinstance(value, Path):
                out[name.upper()] = str(value)
            else:
                out[name.upper()] = value
        return out


_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,255}$")
_SERVICE_LINK_RE = re.compile(r"^\s*tcp://[^\s/]+:([0-9]{1,5})/?\s*$")
PORT_SETTINGS = ("server_port", "smtp_port")


def service_link_port(value: str) -> int | None:
    """The port of a Kubernetes service link such as `tcp://10.0.0.7:8000`; None for anything else."""
    found = _SERVICE_LINK_RE.match(value)
    return int(found.group(1)) if found else None


def service_link_warning(variable: str, value: str, port: int) -> str:
    return (
        f"{variable}={value} looks like a Kubernetes service link, not a port: using port {port}."
        f" Set {variable} explicitly, or enableServiceLinks: false in the pod spec"
    )


def parse_api_keys(raw: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, tenant = item.rpartition(":")
        if not sep or not key or not _ID_RE.match(tenant):
            raise ValueError("each entry must be KEY:TENANT with a valid tenant id")
        keys[key] = tenant
    return keys


def _mask_url(url: str) -> str:
    return re.sub(r"(://)([^/@]+)@", r"\1***@", url)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's error into one naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None
