"""Credentials → one Principal: tenant API keys, client tokens, or nothing (open mode); client address."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from quart import g, request, websocket
from quart.globals import request_ctx, websocket_ctx

from msev15.principal import Principal, Role
from msev15.settings import parse_api_keys
from msev15.web.errors import Forbidden, Unauthorized
from msev15.web.services import services
from msev15.web.tokens import TokenRejected, looks_like_token, verify


@dataclass(frozen=True, slots=True)
class Credential:
    """What the request proved before its tenant and user are asked for."""

    role: Role
    tenant_id: str | None = None  # the key's or the token's; None in open mode
    user_id: str | None = None  # a token's end user
    verified_email: str | None = None


def _presented() -> str | None:
    source = websocket if websocket_ctx else request
    auth = source.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = source.headers.get("X-API-Key")
    if key:
        return key.strip()
    if websocket_ctx:  # browsers cannot set headers on a WebSocket
        return source.args.get("token") or source.args.get("api_key") or None
    return None


@lru_cache(maxsize=8)
def _key_table(raw: str) -> tuple[tuple[bytes, str], ...]:
    """API_KEYS parsed and encoded once, not on every request."""
    return tuple((key.encode(), tenant) for key, tenant in parse_api_keys(raw).items())


def _tenant_for(key: str, table: tuple[tuple[bytes, str], ...]) -> str | None:
    """Constant-time over every configured key, so timing tells nothing about near misses."""
    found: str | None = None
    encoded = key.encode()
    for candidate, tenant in table:
        if hmac.compare_digest(candidate, encoded):
            found = tenant
    return found


def credential() -> Credential:
    """The request's credential, checked once per request: 401 for a bad one, or none where keys are on."""
    if "credential" in g:
        found: Credential = g.credential
        return found
    live = services()
    presented = _presented()
    if presented is not None and looks_like_token(presented):
        try:
            who = verify(live.token_secret, presented)
        except TokenRejected as exc:
            raise Unauthorized(f"client token rejected: {exc}") from None
        found = Credential("customer", who.tenant_id, who.user_id, who.verified_email)
    elif live.settings.api_keys is None:
        found = Credential("open")
    else:
        tenant = (
            _tenant_for(presented, _key_table(live.settings.api_keys.get_secret_value()))
            if presented
            else None
        )
        if tenant is None:
            raise Unauthorized("a valid API key or client token is required (Authorization: Bearer ...)")
        found = Credential("tenant", tenant)
    g.credential = found
    return found


def require_credentials() -> None:
    """Before every /api/v1 route: the credential is valid (which kind is the route's business)."""
    credential()


def require_shop_credentials() -> None:
    """Routes for the shop's own servers (audit, minting tokens): a customer's token is a 403."""
    if credential().role == "customer":
        raise Forbidden("a client token cannot use this endpoint; it is for the shop's own servers")


def authorize(tenant_id: str | None, user_id: str | None = None) -> Principal:
    """The request's principal; asking for another tenant (or, with a token, another user) is a 403.

    `tenant_id` and `user_id` are what the client actually sent (None: not sent).
    """
    found = credential()
    if found.role == "customer":
        assert found.tenant_id is not None and found.user_id is not None
        if tenant_id is not None and tenant_id != found.tenant_id:
            raise Forbidden("this client token does not give access to that tenant")
        if user_id is not None and user_id != found.user_id:
            raise Forbidden("this client token acts for one end user only")
        return Principal(found.tenant_id, found.user_id, found.verified_email, "customer")
    if found.role == "tenant":
        assert found.tenant_id is not None
        if tenant_id is not None and tenant_id != found.tenant_id:
            raise Forbidden("this API key does not give access to that tenant")
        return Principal(found.tenant_id, user_id, None, "tenant")
    return Principal(tenant_id or "default", user_id, None, "open")


@lru_cache(maxsize=8)
def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """TRUSTED_PROXIES parsed once, not on every request."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in raw.split(",") if item.strip())


def _trusted(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def from_trusted_proxy() -> bool:
    """Is the peer one of TRUSTED_PROXIES (so its X-Forwarded-* headers may be believed)?"""
    source = websocket if websocket_ctx else request
    networks = _networks(services().settings.trusted_proxies)
    return bool(networks) and _trusted(source.remote_addr or "", networks)


def client_ip() -> str:
    """The peer address, or the first untrusted hop of X-Forwarded-For when the peer is a trusted proxy."""
    source = websocket if websocket_ctx else request
    peer = source.remote_addr or ""
    if not (request_ctx or websocket_ctx):
        return peer
    networks = _networks(services().settings.trusted_proxies)
    if not networks:
        return peer
    if not _trusted(peer, networks):
        return peer
    hops = [h.strip() for h in source.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
