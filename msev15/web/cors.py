"""CORS for browser clients on other origins (ENABLE_CORS, CORS_ORIGINS)."""

from __future__ import annotations

from quart import Quart, Response, request

_ALLOW_HEADERS = "Authorization, Content-Type, X-API-Key, X-Request-ID"
_METHODS = "GET, POST, DELETE, OPTIONS"


def install_cors(app: Quart, origins: list[str]) -> None:
    """Answer preflights and stamp allowed origins; `*` allows any origin (without credentials)."""
    allow_any = "*" in origins
    allowed = set(origins)

    def _origin_ok(origin: str | None) -> bool:
        return bool(origin) and (allow_any or origin in allowed)

    @app.before_request
    async def _preflight() -> Response | None:
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            response = Response("", status=204)
            if _origin_ok(request.headers.get("Origin")):
                response.headers["Access-Control-Allow-Methods"] = _METHODS
                response.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
            return response
        return None

    @app.after_request
    async def _stamp(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if _origin_ok(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else str(origin)
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
            if not allow_any:
                response.headers["Vary"] = "Origin"
        return response
