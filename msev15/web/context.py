"""Per-request context: the request id, the client ip and the log fields of every request and socket."""

from __future__ import annotations

import asyncio
import re
import uuid

from quart import Quart, Response, g, request, websocket
from quart.globals import websocket_ctx
from werkzeug.exceptions import HTTPException

from msev15.logs import client_ip_var, request_id_var, session_id_var, tenant_id_var
from msev15.web.auth import client_ip

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_DRAIN_SECONDS = 0.5  # a body sent with its headers is here by then


def install_request_context(app: Quart) -> None:
    """Request id, client ip and log context for every request and WebSocket."""

    async def _begin() -> None:
        source = websocket if websocket_ctx else request
        supplied = source.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        request_id_var.set(g.request_id)
        client_ip_var.set(client_ip())
        session_id_var.set(None)
        tenant_id_var.set(None)

    app.before_request(_begin)
    app.before_websocket(_begin)

    @app.after_request
    async def _stamp(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        if response.status_code >= 400:
            await _settle_body(response)
        return response


async def _settle_body(response: Response) -> None:
    """A refusal sent before the body was read (401, 403, 413, 429...) must leave the keep-alive
    connection usable: read what is left of a small body, or tell the client to reconnect."""
    if request.content_length == 0 or (request.content_length is None and not _chunked()):
        return
    if "100-continue" in request.headers.get("Expect", "").lower():
        response.headers["Connection"] = "close"  # the client waits for a 100 that will not come
        return
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            await request.get_data(
                as_text=False
            )  # cached when the route read it; bounded by MAX_CONTENT_LENGTH
    except (TimeoutError, HTTPException):  # too large, or too slow: do not wait for it
        response.headers["Connection"] = "close"


def _chunked() -> bool:
    return "chunked" in request.headers.get("Transfer-Encoding", "").lower()
