"""The live objects of one running app, opened together and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from quart import current_app

from msev15.agent.loop import Agent
from msev15.agent.model import ModelClient
from msev15.agent.providers import check_credential, create_model
from msev15.agent.runner import TurnRunner
from msev15.agent.turn_state import AgentLimits
from msev15.mail.sender import Mailer
from msev15.settings import Settings
from msev15.stores.audit import AuditLog
from msev15.stores.orders import OrderRepository
from msev15.stores.sessions import SessionStore, open_session_store
from msev15.stores.turns import MemoryTurnBuffer, TurnBuffer
from msev15.tools.clock import builtin_tools
from msev15.tools.mail import mail_tools
from msev15.tools.mcp import McpToolProvider
from msev15.tools.orders import order_tools
from msev15.tools.registry import ToolRegistry
from msev15.web.tokens import load_secret

log = logging.getLogger(__name__)

EXTENSION_KEY = "msev15"


@dataclass(slots=True)
class Check:
    """A readiness probe: `run` returns a short status; `healthy` lists the statuses that pass."""

    name: str
    run: Callable[[], Awaitable[str]]
    critical: bool
    healthy: frozenset[str] = frozenset({"ok"})


@dataclass(slots=True)
class Overrides:
    """Test doubles and pre-built parts handed to `create_app`."""

    model: ModelClient | None = None
    sessions: SessionStore | None = None


@dataclass(slots=True)
class Services:
    settings: Settings
    model: ModelClient
    sessions: SessionStore
    tools: ToolRegistry
    agent: Agent
    runner: TurnRunner
    started_at: float
    checks: list[Check] = field(default_factory=list)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    mcp: McpToolProvider | None = None
    orders: OrderRepository | None = None
    mailer: Mailer | None = None
    audit: AuditLog | None = None
    token_secret: bytes = b""  # signs client and visitor tokens (web/tokens.py)
    draining: bool = False  # shutdown has begun: readiness answers 503 `draining`
    readiness_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    readiness_cache: tuple[float, ReadinessResult] | None = None

    def uptime(self) -> float:
        return round(time.time() - self.started_at, 3)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """A background task that is cancelled and awaited at shutdown."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def close(self) -> None:
        """Running turns finish and are stored first (bounded), then everything closes in reverse.

        The closing happens even when the drain is cut short (the server's own shutdown timeout
        cancels it): a connection left open keeps its thread, and the process, alive. The MCP
        client leaves its session before the background tasks are cancelled: its task, cancelled
        inside the SDK's session, could wait for ever.
        """
        try:
            await self.runner.drain(min(self.settings.turn_timeout_seconds, 30.0))
        finally:
            if self.mcp is not None:
                await self.mcp.close()
            for task in list(self.background):
                task.cancel()
            await asyncio.gather(*self.background, return_exceptions=True)
            await self.stack.aclose()


def _turn_buffer(settings: Settings, sessions: SessionStore) -> TurnBuffer:
    """Turns go where sessions go: with Redis sessions, to Redis, so any instance can serve a resume.

    redis-py is imported only when a Redis store exists (it costs every worker memory): a store
    that is a RedisSessionStore has loaded its module already.
    """
    redis_sessions = sys.modules.get("msev15.stores.sessions.redis")
    if redis_sessions is None or not isinstance(sessions, redis_sessions.RedisSessionStore):
        return MemoryTurnBuffer(
            settings.resume_buffer_seconds, max_kept_bytes=settings.resume_buffer_max_mb * 1024 * 1024
        )
    from msev15.stores.turns_redis import RedisTurnBuffer, reader_client  # noqa: PLC0415

    return RedisTurnBuffer(
        sessions.client,
        reader_client(settings.redis_url),
        settings.resume_buffer_seconds,
        retry_window=sessions.retry_window,
    )


def services() -> Services:
    """The running app's services (inside a request or app context)."""
    found: Services = current_app.extensions[EXTENSION_KEY]
    return found


async def open_services(settings: Settings, overrides: Overrides) -> Services:
    """Open every part; on failure, close what was opened and re-raise."""
    stack = contextlib.AsyncExitStack()
    try:
        model = overrides.model if overrides.model is not None else create_model(settings)
        stack.push_async_callback(model.close)
        await check_credential(model)  # a keyless model's first token: the banner says whether it came
        sessions = (
            overrides.sessions if overrides.sessions is not None else await open_session_store(settings)
        )
        stack.push_async_callback(sessions.close)
        tools = ToolRegistry(settings.tool_timeout_seconds, settings.tool_result_max_chars)
        tools.register_all(builtin_tools())
        orders, audit = await open_orders_and_audit(settings)
        stack.push_async_callback(orders.close)
        stack.push_async_callback(audit.close)
        mailer = Mailer(orders, settings)
        stack.push_async_callback(mailer.close)
        await mailer.start()
        tools.register_all(order_tools(orders, mailer))  # an approved return mails its label
        tools.register_all(mail_tools(mailer, orders))
        tools.observers.append(audit)
        agent = Agent(
            model,
            tools,
            sessions,
            AgentLimits(
                settings.max_tool_rounds,
                settings.turn_timeout_seconds,
                settings.model_context_chars,
                settings.require_confirmation,
                settings.approval_ttl_seconds,
            ),
            decisions=audit,
        )
        buffer = _turn_buffer(settings, sessions)
        stack.push_async_callback(buffer.close)
        runner = TurnRunner(agent, buffer)
        found = Services(settings, model, sessions, tools, agent, runner, time.time(), stack=stack)
        found.token_secret = load_secret(settings)
        found.checks.append(Check("model", model.check, critical=True))
        found.checks.append(Check("sessions", sessions.check, critical=settings.session_store != "memory"))
        found.orders, found.mailer = orders, mailer
        found.audit = audit
        found.checks.append(Check("database", orders.check, critical=True))
        found.checks.append(
            Check("smtp", mailer.check, critical=False, healthy=frozenset({"ok", "outbox only"}))
        )
        found.spawn(_purge_sessions(sessions, settings.session_ttl_seconds), "session-purge")
        found.spawn(_purge_turns(buffer, settings.resume_buffer_seconds), "turn-buffer-purge")
        # MCP last: its tools join the registry next to the local ones, which win name collisions.
        found.mcp = McpToolProvider(settings, tools)
        stack.push_async_callback(found.mcp.close)
        found.checks.append(Check("mcp", found.mcp.check, critical=settings.mcp_server_required))
        await found.mcp.start(found.spawn)
        return found
    except BaseException:
        await stack.aclose()
        raise


async def open_orders_and_audit(settings: Settings) -> tuple[OrderRepository, AuditLog]:
    """Orders, outbox and audit: in the SQLite file, or in PostgreSQL (one pool) with DATABASE_URL."""
    if settings.database_url is None:
        orders = await OrderRepository.open(
            settings.order_db_path, seed=settings.seed_demo_data, busy_timeout_ms=settings.db_busy_timeout_ms
        )
        try:
            audit = await AuditLog.open(settings.order_db_path, busy_timeout_ms=settings.db_busy_timeout_ms)
        except BaseException:
            await orders.close()
            raise
        return orders, audit
    from msev15.stores.postgres import PostgresDatabase  # asyncpg loads only when it is used

    database = await PostgresDatabase.open(
        settings.database_url.get_secret_value(),
        settings.db_pool_size,
        settings.db_busy_timeout_ms / 1000,
        label=settings.database_label,
    )
    try:
        orders = await OrderRepository.on(database, seed=settings.seed_demo_data)
    except BaseException:
        await database.close()
        raise
    return orders, AuditLog.on(database)


async def _purge_sessions(sessions: SessionStore, ttl: float) -> None:
    interval = max(1.0, min(ttl / 4, 300.0))
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await sessions.purge_expired()
            if removed:
                log.info("expired %d idle sessions", removed)
        except Exception:
            log.exception("session purge failed")


async def _purge_turns(buffer: TurnBuffer, keep: float) -> None:
    while True:
        await asyncio.sleep(max(1.0, keep / 4))
        try:
            await buffer.purge()
        except Exception:
            log.exception("turn buffer purge failed")


ReadinessResult = tuple[str, dict[str, str], list[str]]  # status, checks, warnings


async def readiness(found: Services) -> ReadinessResult:
    """The checks' result, run at most once per HEALTH_CACHE_SECONDS however many probes ask.

    Probes that arrive while the checks run wait for that run instead of starting their own, so a
    burst of probes (several load balancers, a Kubernetes probe every second) costs one model call.
    """
    ttl = found.settings.health_cache_seconds
    async with found.readiness_lock:
        cached = found.readiness_cache
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        result = await run_checks(found)
        found.readiness_cache = (time.monotonic(), result)
        return result


async def run_checks(found: Services, limit: float = 2.0) -> ReadinessResult:
    """Readiness: all checks at once, each bounded by `limit` seconds."""

    async def one(check: Check) -> str:
        try:
            async with asyncio.timeout(limit):
                return await check.run()
        except TimeoutError:
            return f"unavailable: no answer within {limit:g} s"
        except Exception as exc:
            return f"unavailable: {type(exc).__name__}"

    results = await asyncio.gather(*(one(c) for c in found.checks))
    checks: dict[str, str] = {}
    warnings: list[str] = []
    status = "healthy"
    for check, result in zip(found.checks, results, strict=True):
        checks[check.name] = result
        if result in check.healthy:
            continue
        if check.critical:
            status = "unhealthy"
        else:
            warnings.append(f"{check.name}: {result}")
            if status == "healthy":
                status = "degraded"
    return status, checks, warnings
