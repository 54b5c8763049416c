"""Every request measured (route template, method, status, latency) and, with tracing on, traced."""

from __future__ import annotations

import os
import time
from typing import Any

from quart import Quart, Response, g, has_request_context, request, websocket

from msev15.metrics import metrics
from msev15.tracing import current_span

UNMATCHED = "unmatched"  # no route matched (404, 405): one label for every unknown path


def install_http_metrics(app: Quart) -> None:
    """Count each answered request; installed first, so even a refusal of an earlier hook is timed."""

    @app.before_request
    async def _started() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    async def _answered(response: Response) -> Response:
        started = g.get("metrics_started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        metrics().http(route, request.method, response.status_code, elapsed)
        return response


def install_http_tracing(app: Quart) -> None:
    """One server span per request (OpenTelemetry's ASGI middleware), named by its route template.

    The middleware never sees the query string (it may carry a token or a user id), nor makes a
    span per body chunk sent or received (an SSE stream would make hundreds). Health probes,
    scrapes and static files are not traced unless OTEL_PYTHON_ASGI_EXCLUDED_URLS says otherwise:
    a probe every few seconds would bury the requests worth reading, and each span costs about
    0.1 ms of CPU to make and export.
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.util.http import ExcludeList, parse_excluded_urls

    chosen = os.environ.get("OTEL_PYTHON_ASGI_EXCLUDED_URLS")
    excluded = parse_excluded_urls(chosen) if chosen is not None else ExcludeList(list(UNTRACED))
    traced = OpenTelemetryMiddleware(
        _RestoreQuery(app.asgi_app), excluded_urls=excluded, exclude_spans=["receive", "send"]
    )
    app.asgi_app = _HideQuery(traced)  # type: ignore[method-assign,assignment]

    async def _name_by_route() -> None:
        rule = request.url_rule if has_request_context() else websocket.url_rule
        current = current_span()
        if current is not None and rule is not None:
            method = request.method if has_request_context() else "GET"
            current.update_name(f"{method} {rule.rule}")
            current.set_attribute("http.route", rule.rule)

    app.before_request(_name_by_route)
    app.before_websocket(_name_by_route)


_QUERY_KEY = "msev15.query_string"
# Searched in the request's URL (scheme, host and path; the query string is never there).
UNTRACED = (r"://[^/]+/health(/liveness|/readiness)?$", r"://[^/]+/metrics$", r"://[^/]+/static/")


class _HideQuery:
    """What the tracing middleware sees of a request: its path, never its query string."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("query_string"):
            scope = {**scope, "query_string": b"", _QUERY_KEY: scope["query_string"]}
        await self.inner(scope, receive, send)


class _RestoreQuery:
    """Below the tracing middleware the app gets the query string back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = scope.get(_QUERY_KEY)
        if query is not None:
            scope = {**scope, "query_string": query}
            del scope[_QUERY_KEY]
        await self.app(scope, receive, send)
