"""The chat page and the API docs page."""

from __future__ import annotations

from quart import Blueprint, render_template
from quart_schema import hide

from msev15.settings import VERSION
from msev15.web.services import services

routes = Blueprint("page", __name__)


@routes.get("/")
@hide
async def index() -> str:
    """The chat page."""
    found = services()
    return await render_template("index.html", version=VERSION, provider=found.model.provider)


@routes.get("/docs")
@hide
async def docs() -> str:
    """A readable page for the OpenAPI document, served locally (no CDN)."""
    return await render_template("docs.html", version=VERSION)
