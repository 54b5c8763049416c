"""The chat page and the API docs page."""

from __future__ import annotations

from quart import Blueprint, Response, render_template
from quart_schema import hide

from msev15.settings import VERSION
from msev15.web.services import services

routes = Blueprint("page", __name__)


@routes.after_request
async def _security_headers(response: Response) -> Response:
    """The page and the docs page run our own files only: no inline script, no other origin."""
    ancestors = services().settings.frame_ancestors
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
        f" frame-ancestors {ancestors}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@routes.get("/")
@hide
async def index() -> str:
    """The chat page."""
    found = services()
    return await render_template("index.html", version=VERSION, provider=found.model.provider)


@routes.get("/docs")
@hide
async def docs() -> str:
    """Swagger UI on /openapi.json from vendored files (static/vendor/swagger-ui), no CDN, no inline JS."""
    return await render_template("docs.html", version=VERSION)
