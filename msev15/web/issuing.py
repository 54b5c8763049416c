"""Issuing tokens: client tokens for the shop's backend, visitor tokens for anonymous customers."""

from __future__ import annotations

import secrets

from quart import Blueprint, Response, request
from quart_schema import document_response, tag

from msev15.jsonio import iso
from msev15.web.auth import require_credentials, require_shop_credentials
from msev15.web.errors import NotFound, json_response
from msev15.web.schemas import (
    ClientTokenRequest,
    ErrorResponse,
    TenantQuery,
    TokenOut,
    VisitorTokenRequest,
    json_body,
    parse_body,
    parse_query,
    query_params,
)
from msev15.web.services import services
from msev15.web.tokens import IssuedToken, mint
from msev15.web.turns import asked_principal

routes = Blueprint("tokens", __name__, url_prefix="/api/v1")


def _issued(token: IssuedToken) -> Response:
    body = {
        "token": token.token,
        "tenant_id": token.tenant_id,
        "user_id": token.user_id,
        "customer_email": token.customer_email,
        "expires_at": iso(token.expires_at),
    }
    response = json_response(body, 201)
    response.headers["Cache-Control"] = "no-store"  # a credential: never cached on the way
    return response


@routes.post("/client-tokens")
@tag(["tokens"])
@query_params(TenantQuery)
@json_body(ClientTokenRequest)
@document_response(TokenOut, 201)
@document_response(ErrorResponse, 403)
async def client_token(data: ClientTokenRequest) -> Response:
    """A token for one end user of the key's tenant, minted after the shop's own login.

    Needs the tenant's API key (open with no API_KEYS, for development); a client token is a 403.
    """
    require_credentials()
    require_shop_credentials()
    tenant = asked_principal(parse_query(TenantQuery, request.args)).tenant_id
    live = services()
    ttl = data.ttl_seconds or live.settings.client_token_ttl_seconds
    return _issued(mint(live.token_secret, tenant, data.user_id, data.customer_email, ttl))


@routes.post("/visitor-tokens")
@tag(["tokens"])
@document_response(TokenOut, 201)
@document_response(ErrorResponse, 404)
async def visitor_token() -> Response:
    """A token for a new anonymous customer of PUBLIC_CHAT_TENANT, when PUBLIC_CHAT is on.

    No credentials and no body (or `{}`); a 404 when public chat is off, whatever is presented.
    """
    live = services()
    if not live.settings.public_chat_enabled:
        raise NotFound("no such resource")
    raw = await request.get_data(as_text=False)
    if raw.strip():
        parse_body(VisitorTokenRequest, raw)
    user = f"visitor-{secrets.token_hex(16)}"
    settings = live.settings
    token = mint(
        live.token_secret, settings.public_chat_tenant, user, None, settings.client_token_ttl_seconds
    )
    return _issued(token)
