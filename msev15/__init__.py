"""MSEv15E2E: a customer-service chat agent service for shops."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from quart import Quart
from quart_schema import Info, QuartSchema

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


@functools.cache
def _freeze_startup_objects() -> None:
    """Move what the first start-up loaded (modules, clients, schemas) out of the collector's reach.

    They live as long as the process, so full collections stay short and latency stays even.
    Once per process: later apps in the same process (tests) must stay collectable.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Any = None, **overrides: Any) -> Quart:
    """Build the app; tests pass their own settings and doubles (`model=`, `sessions=`).

    Keyword overrides that name a setting (lower case) replace it; `model`, `sessions` and any
    other non-setting keyword are handed to the services as pre-built parts.
    """
    from .errors import register_error_handlers
    from .logs import banner, configure_logging
    from .openapi import ServiceOpenAPI
    from .ratelimit import install_rate_limits
    from .services import EXTENSION_KEY, Overrides, open_services
    from .settings import Settings, load_settings
    from .web import api, health, install_request_context, page
    from .ws import ws

    parts = Overrides(model=overrides.pop("model", None), sessions=overrides.pop("sessions", None))
    setting_names = set(Settings.model_fields)
    parts.extra = {k: overrides.pop(k) for k in list(overrides) if k not in setting_names}
    if settings is None:
        settings = load_settings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)

    configure_logging(settings)
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
    install_request_context(app)
    install_rate_limits(app, settings)  # after the request id exists, so a 429 carries it
    app.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(page)
    app.register_blueprint(ws)
    if settings.enable_cors:
        from .cors import install_cors

        install_cors(app, settings.cors_origin_list)

    @app.while_serving
    async def _lifespan() -> AsyncGenerator[None, None]:
        found = await open_services(settings, parts)
        app.extensions[EXTENSION_KEY] = found
        banner(
            settings,
            __version__,
            {
                "model_provider": found.model.provider,
                "model": found.model.model_name,
                "sessions": settings.session_store,
                "database": str(settings.order_db_path),
                "email": (
                    f"smtp {settings.smtp_server}:{settings.smtp_port}"
                    if settings.smtp_server
                    else f"outbox only ({settings.outbox_dir})"
                ),
                "auth": "api keys" if settings.api_key_map else "OFF (no API_KEYS)",
                "mcp": found.mcp.state if found.mcp is not None else "off",
            },
        )
        if not settings.api_key_map:
            log.warning("API_KEYS is not set: every client may use every tenant. Set API_KEYS in production.")
        _freeze_startup_objects()
        try:
            yield
        finally:
            await found.close()
            app.extensions.pop(EXTENSION_KEY, None)

    return app
