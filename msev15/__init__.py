"""MSEv15E2E: a customer-service chat agent service for shops."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncGenerator
from typing import Any

from quart import Quart
from quart_schema import Info, QuartSchema

from msev15.agent.model import ModelClient
from msev15.agent.providers import model_auth
from msev15.logs import banner, configure_logging
from msev15.metrics import configure_metrics, metrics
from msev15.settings import ROOT, VERSION, Settings, load_settings
from msev15.stores.sessions import SessionStore, hypercorn_workers
from msev15.tracing import configure_tracing, shutdown_tracing
from msev15.web import chat, health, issuing, page, ws
from msev15.web import sessions as session_routes
from msev15.web.context import install_request_context
from msev15.web.cors import install_cors
from msev15.web.errors import register_error_handlers
from msev15.web.instrument import install_http_metrics, install_http_tracing
from msev15.web.openapi import ServiceOpenAPI
from msev15.web.ratelimit import install_rate_limits
from msev15.web.services import EXTENSION_KEY, Overrides, Services, open_services

__version__ = VERSION
__all__ = ["ROOT", "__version__", "create_app"]
log = logging.getLogger(__name__)


@functools.cache
def _freeze_startup_objects() -> None:
    """Move what the first start-up loaded (modules, clients, schemas) out of the collector's reach.

    They live as long as the process, so full collections stay short and latency stays even.
    Once per process: later apps in the same process (tests) must stay collectable.
    """
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    *,
    model: ModelClient | None = None,
    sessions: SessionStore | None = None,
    **overrides: Any,
) -> Quart:
    """Build the app; tests pass their own settings and doubles (`model=`, `sessions=`).

    Other keyword overrides name a setting (lower case) and replace it; anything else is a
    mistake and raises TypeError instead of being dropped.
    """
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"create_app() got unknown overrides: {', '.join(unknown)}")
    parts = Overrides(model=model, sessions=sessions)
    if settings is None:
        settings = load_settings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)

    configure_logging(settings)
    if settings.enable_metrics:
        configure_metrics(hypercorn_workers())  # before anything records: several workers share files
    tracing = configure_tracing()  # only with OTEL_EXPORTER_OTLP_ENDPOINT set
    app = Quart(__name__, static_folder=str(ROOT / "static"), template_folder=str(ROOT / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["BODY_TIMEOUT"] = 30
    QuartSchema(
        app,
        info=Info(title="MSEv15E2E", version=__version__),
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=ServiceOpenAPI,
    )
    register_error_handlers(app)
    if settings.enable_metrics:
        install_http_metrics(app)  # first: a request an earlier hook refuses is still counted
    install_request_context(app)
    install_rate_limits(app, settings)  # after the request id exists, so a 429 carries it
    for module in (chat, session_routes, issuing, health, page, ws):
        app.register_blueprint(module.routes)
    if settings.enable_cors:
        install_cors(app, settings.cors_origin_list)
    if tracing:
        install_http_tracing(app)

    @app.while_serving
    async def _lifespan() -> AsyncGenerator[None, None]:
        found = await open_services(settings, parts)
        app.extensions[EXTENSION_KEY] = found
        _announce(settings, found)
        _freeze_startup_objects()
        try:
            yield
        finally:
            found.draining = True  # readiness answers 503 `draining` from now on; liveness stays 200
            await found.close()
            app.extensions.pop(EXTENSION_KEY, None)
            if settings.enable_metrics:
                metrics().close()
            shutdown_tracing()

    return app


def _announce(settings: Settings, found: Services) -> None:
    """The start banner (secrets masked) and the warning an open service deserves."""
    banner(
        settings,
        __version__,
        {
            "model_provider": found.model.provider,
            "model": found.model.model_name,
            "model_auth": model_auth(found.model),
            "sessions": settings.session_store,
            "database": settings.database_label,
            "email": (
                f"smtp {settings.smtp_server}:{settings.smtp_port}"
                if settings.smtp_server
                else f"outbox only ({settings.outbox_dir})"
            ),
            "auth": "api keys" if settings.api_key_map else "OFF (no API_KEYS)",
            "mcp": found.mcp.state if found.mcp is not None else "off",
        },
    )
    for warning in settings.start_warnings:
        log.warning(warning)
    if not settings.api_key_map:
        log.warning("API_KEYS is not set: every client may use every tenant. Set API_KEYS in production.")
