"""Per-client-IP rate limits on /api/v1/* (quart-rate-limiter), shared by HTTP and WebSocket frames."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from quart import Quart, request
from quart_rate_limiter import RateLimit, RateLimiter
from quart_rate_limiter.store import RateLimiterStoreABC

from msev15.settings import Settings
from msev15.web.auth import client_ip

log = logging.getLogger(__name__)

LIMITER_KEY = "msev15_rate_limiter"


class BoundedMemoryStore(RateLimiterStoreABC):
    """The in-process store, bounded: arrival times already in the past carry no state and are dropped."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: OrderedDict[str, datetime] = OrderedDict()
        self.max_keys = max_keys

    async def before_serving(self) -> None:
        return None

    async def after_serving(self) -> None:
        self._tats.clear()

    async def get(self, key: str, default: datetime) -> datetime:
        return self._tats.get(key, default)

    async def set(self, key: str, tat: datetime) -> None:
        self._tats[key] = tat
        self._tats.move_to_end(key)
        if len(self._tats) > self.max_keys:
            now = datetime.now(UTC)
            for old in [k for k, v in self._tats.items() if v <= now]:
                del self._tats[old]
            while len(self._tats) > self.max_keys:
                self._tats.popitem(last=False)


class SharedRedisStore(RateLimiterStoreABC):
    """Limits shared by every instance; keys expire with their window, and a Redis outage fails open."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: Any = None

    async def before_serving(self) -> None:
        from redis import asyncio as aioredis

        self._redis = aioredis.from_url(self._url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def after_serving(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def get(self, key: str, default: datetime) -> datetime:
        try:
            raw = await self._redis.get("msev15:rl:" + key)
        except Exception as exc:  # never refuse service because the limiter's store is down
            log.warning("rate-limit store unavailable: %s", type(exc).__name__)
            return default
        return default if raw is None else datetime.fromtimestamp(float(raw), UTC)

    async def set(self, key: str, tat: datetime) -> None:
        ttl_ms = max(1000, int((tat.timestamp() - time.time()) * 1000) + 1000)
        try:
            await self._redis.set("msev15:rl:" + key, tat.timestamp(), px=ttl_ms)
        except Exception as exc:
            log.warning("rate-limit store unavailable: %s", type(exc).__name__)


class ClientRateLimiter(RateLimiter):
    """One budget per client across every limited endpoint (the stock key is per endpoint)."""

    async def _create_key(self, endpoint: str, rate_limit: RateLimit) -> str:
        return f"{rate_limit.key}-{client_ip()}"

    async def hit(self, limits: list[RateLimit]) -> None:
        """Count one unit (a WebSocket chat frame) against the client's budget; raises when over it."""
        await self._raise_on_rejection("ws", limits)
        await self._update_limits("ws", limits)


async def _client_key() -> str:
    return client_ip()


async def _not_api() -> bool:
    return not request.path.startswith("/api/v1/")


def install_rate_limits(app: Quart, settings: Settings) -> None:
    """Limit /api/v1/* per client IP; health, the page and static files stay exempt."""
    if not settings.enable_rate_limiting:
        return
    store: RateLimiterStoreABC = (
        SharedRedisStore(settings.redis_url) if settings.session_store == "redis" else BoundedMemoryStore()
    )
    limits = [RateLimit(settings.rate_limit_per_minute, timedelta(minutes=1), _client_key, _not_api)]
    limiter = ClientRateLimiter(app, key_function=_client_key, store=store, default_limits=limits)
    app.extensions[LIMITER_KEY] = (limiter, limits)  # frames share the key: it is the client, not the route


async def count_frame(app: Quart) -> None:
    """Rate-limit one WebSocket chat frame like one API request (no-op when limits are off)."""
    entry = app.extensions.get(LIMITER_KEY)
    if entry is not None:
        limiter, limits = entry
        await limiter.hit(limits)
