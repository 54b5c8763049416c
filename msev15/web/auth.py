"""API keys → tenants, and the client address behind trusted proxies."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from quart import g, request, websocket
from quart.globals import request_ctx, websocket_ctx

from msev15.settings import parse_api_keys
from msev15.web.errors import Forbidden, Unauthorized
from msev15.web.services import services


def _presented_key() -> str | None:
    source = websocket if websocket_ctx else request
    auth = source.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    key = source.headers.get("X-API-Key")
    if key:
        return key.strip()
    if websocket_ctx:  # browsers cannot set headers on a WebSocket
        return source.args.get("api_key") or None
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


def require_api_key() -> None:
    """401 unless auth is off or a known key was presented; remembers the key's tenant."""
    configured = services().settings.api_keys
    if configured is None:
        g.key_tenant = None
        return
    table = _key_table(configured.get_secret_value())
    key = _presented_key()
    tenant = _tenant_for(key, table) if key else None
    if tenant is None:
        raise Unauthorized("a valid API key is required (Authorization: Bearer KEY)")
    g.key_tenant = tenant


def authorize(requested: str | None) -> str:
    """The tenant of this request: the key's, and 403 when the client asks for another."""
    if "key_tenant" not in g:
        require_api_key()
    key_tenant: str | None = g.key_tenant
    if key_tenant is None:
        return requested or "default"
    if requested is not None and requested != key_tenant:
        raise Forbidden("this API key does not give access to that tenant")
    return key_tenant


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
