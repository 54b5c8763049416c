"""Health: liveness without outside calls, readiness with every dependency checked at once."""

from __future__ import annotations

import logging
from typing import Any

from quart import Blueprint, Response
from quart_schema import document_response, hide, tag

from msev15.jsonio import iso, utcnow
from msev15.metrics import CONTENT_TYPE, metrics
from msev15.web.errors import NotFound, json_response
from msev15.web.schemas import Health, Readiness
from msev15.web.services import readiness as check_readiness
from msev15.web.services import services

log = logging.getLogger(__name__)
routes = Blueprint("health", __name__)


def _health_body() -> dict[str, Any]:
    return {"status": "healthy", "timestamp": iso(utcnow()), "uptime_seconds": services().uptime()}


@routes.get("/health")
@tag(["health"])
@document_response(Health)
async def health_check() -> Response:
    """Is the process up? No outside calls."""
    return json_response(_health_body())


@routes.get("/health/liveness")
@tag(["health"])
@document_response(Health)
async def liveness() -> Response:
    """Is the process up? No outside calls."""
    return json_response(_health_body())


@routes.get("/health/readiness")
@tag(["health"])
@document_response(Readiness)
@document_response(Readiness, 503)
async def readiness() -> Response:
    """Can it serve? Database and model are critical; MCP and SMTP only degrade.

    Results are reused for HEALTH_CACHE_SECONDS. From the moment shutdown begins the answer is 503
    `draining` (no checks run), so a load balancer stops sending new work while turns finish.
    """
    found = services()
    if found.draining:
        body = {
            "status": "draining",
            "timestamp": iso(utcnow()),
            "uptime_seconds": found.uptime(),
            "checks": {},
            "warnings": ["shutting down: finishing the turns in flight"],
        }
        return json_response(body, 503)
    status, checks, warnings = await check_readiness(found)
    body = {
        "status": status,
        "timestamp": iso(utcnow()),
        "uptime_seconds": found.uptime(),
        "checks": checks,
        "warnings": warnings,
    }
    return json_response(body, 503 if status == "unhealthy" else 200)


@routes.get("/metrics")
@hide
async def metrics_text() -> Response:
    """Prometheus text format for scrapers: no API key, no rate limit (ENABLE_METRICS=false: 404)."""
    found = services()
    if not found.settings.enable_metrics:
        raise NotFound("no such resource")
    recorded = metrics()
    if found.mailer is not None:
        try:
            recorded.outbox_counts(await found.mailer.counts())
        except Exception as exc:  # a scrape still answers while the database is down
            log.warning("metrics: outbox counts unavailable: %s", type(exc).__name__)
    body = recorded.render()
    return Response(body, content_type=CONTENT_TYPE)
