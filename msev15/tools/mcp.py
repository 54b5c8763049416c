"""The agent's MCP client: one session to MCP_SERVER_URL, its tools in the registry only while it answers.

One long-lived task owns the `mcp.client.Client` (the SDK's anyio task groups must be entered and
left in the same task): it connects, lists the tools, registers them, probes the server now and
then, and on any failure unregisters the tools and reconnects with capped backoff. Request tasks
call tools on the owner's session directly; the SDK routes each request through memory streams,
so that is safe from any task on the same event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, REQUEST_TIMEOUT

from msev15.jsonio import dumps
from msev15.metrics import metrics
from msev15.settings import Settings
from msev15.tools.registry import RetryableToolError, Tool, ToolContext, ToolError, ToolRegistry

log = logging.getLogger(__name__)

SOURCE = "mcp"
CALL_RETRIES = 2
FIRST_CONNECT_WAIT_SECONDS = 3.0
_MAX_LIST_PAGES = 20
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# The transport turns any non-JSON HTTP error (a 503 from a proxy, a restarting server) into this.
_HTTP_ERROR_MESSAGE = "Server returned an error response"
_UNREACHABLE = "the shop knowledge server is not reachable right now"
_SDK_ERROR_PREFIX = re.compile(r"^Error executing tool [^:]*:\s*")
_PYDANTIC_URL = re.compile(r"\s*For further information visit \S+")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any]"]


class McpToolProvider:
    """Keeps the MCP server's tools in the registry while the server is reachable.

    Args:
        settings: MCP_SERVER_URL, MCP_TIMEOUT_SECONDS and MCP_RECONNECT_SECONDS are read.
        registry: where the remote tools are registered (source "mcp"); local tools win collisions.
    """

    def __init__(self, settings: Settings, registry: ToolRegistry) -> None:
        self.url = settings.mcp_server_url
        self.timeout = settings.mcp_timeout_seconds
        self.reconnect_cap = settings.mcp_reconnect_seconds
        self.registry = registry
        self.schemas: dict[str, dict[str, Any]] = {}
        self._client: Client | None = None
        self._status = "unavailable: not connected yet"
        self._stop = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._failures = 0
        self._established = False
        # One HTTP client for every attempt: building one (its TLS context) costs ~30 ms of CPU,
        # which while the server is down would stall the event loop at each reconnect.
        # Timeouts as the SDK's own default client: the server may hold a response stream open.
        self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0))
        metrics().mcp_connected.set(0)

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self, spawn: Spawn | None = None, wait: float = FIRST_CONNECT_WAIT_SECONDS) -> None:
        """Begin connecting in the background; wait briefly so a running server's tools are there at once."""
        if self._task is not None:
            return
        runner = self._run()
        self._task = spawn(runner, "mcp-client") if spawn is not None else asyncio.create_task(runner)
        try:
            async with asyncio.timeout(wait):
                await self._first_attempt.wait()
        except TimeoutError:
            self._status = f"unavailable: no answer within {wait:g} s"
        if self._client is None:
            log.warning(
                "MCP server %s unavailable (%s): starting without its tools, retrying in the background",
                _mask(self.url),
                self._status.removeprefix("unavailable: "),
            )

    async def close(self) -> None:
        """Leave the session cleanly (inside its owner task) and drop the tools."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            _, pending = await asyncio.wait({task}, timeout=5.0)
            for late in pending:
                late.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._drop_tools()
        self._status = "unavailable: closed"
        if not self._http.is_closed:  # closed once, by whichever comes first at shutdown
            await self._http.aclose()

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def state(self) -> str:
        """One line for the start banner: connected with N tools, or why not."""
        if self._client is not None:
            return f"connected to {_mask(self.url)} ({len(self.schemas)} tools)"
        return f"{_mask(self.url)} {self._status}"

    async def check(self) -> str:
        """Readiness: "ok" after a live listing, else "unavailable: <reason>"."""
        client = self._client
        if client is None:
            return self._status
        try:
            async with asyncio.timeout(min(self.timeout, 1.5)):
                await client.list_tools(cache_mode="bypass")
        except (Exception, TimeoutError) as exc:
            return f"unavailable: {_reason(exc)}"
        return "ok"

    # The owner task --------------------------------------------------------------------

    async def _run(self) -> None:
        base = min(0.5, self.reconnect_cap)
        delay = base
        while not self._stop.is_set():
            self._established = False
            try:
                await self._session()
            except Exception as exc:
                self._on_failure(exc)
            finally:
                self._client = None
                metrics().mcp_connected.set(0)
                self._drop_tools()
                self._first_attempt.set()
            if self._stop.is_set():
                break
            if self._established:
                delay = base  # a working session just ended: the first retry comes soon
            await self._sleep_unless_stopped(delay * random.uniform(0.8, 1.0))
            delay = min(delay * 2, self.reconnect_cap)

    async def _session(self) -> None:
        async with Client(streamable_http_client(self.url, http_client=self._http)) as client:
            listed = await self._list(client)
            self._register(client, listed)
            self._client = client
            self._status = "ok"
            metrics().mcp_connected.set(1)
            if self._failures:
                log.info("MCP server %s is back: %d tools", _mask(self.url), len(listed))
            else:
                log.info("MCP server %s connected: %s", _mask(self.url), ", ".join(t.name for t in listed))
            self._failures = 0
            self._established = True
            self._first_attempt.set()
            await self._watch(client)

    async def _watch(self, client: Client) -> None:
        """Probe the server between calls: an idle connection would not notice it went away."""
        interval = max(0.2, min(self.reconnect_cap, 30.0))
        while not await self._sleep_unless_stopped(interval):
            with anyio.fail_after(self.timeout):  # anyio: this task hosts the SDK's task groups
                listed = await self._list(client)
            if {t.name: _clean_schema(t.input_schema) for t in listed} != self.schemas:
                self._register(client, listed)
                log.info("MCP tools changed: %s", ", ".join(t.name for t in listed))

    async def _list(self, client: Client) -> list[mcp_types.Tool]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep; True as soon as a stop was asked for."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass
        return self._stop.is_set()

    def _on_failure(self, exc: BaseException) -> None:
        reason = _reason(exc)
        was_connected = self._status == "ok"
        self._status = f"unavailable: {reason}"
        self._failures += 1
        if was_connected:
            log.warning(
                "MCP server %s lost (%s): its tools are off until it is back", _mask(self.url), reason
            )
        else:
            log.debug("MCP connect to %s failed: %s", _mask(self.url), reason)

    # Registry ------------------------------------------------------------------------------

    def _register(self, client: Client, listed: list[mcp_types.Tool]) -> None:
        self.registry.unregister_source(SOURCE)
        self.schemas = {}
        for remote in listed:
            if not _NAME_RE.match(remote.name):
                log.warning("MCP tool %r skipped: not a valid function name for the model", remote.name)
                continue
            schema = _clean_schema(remote.input_schema)
            self.schemas[remote.name] = schema
            self.registry.register(
                Tool(
                    name=remote.name,
                    description=remote.description or remote.title or remote.name,
                    args_model=None,
                    handler=self._handler(remote.name),
                    parameters=schema,
                    source=SOURCE,
                    # The SDK's own read timeout answers first, with a clearer error; this is the backstop.
                    timeout=self.timeout + 1.0,
                    retries=CALL_RETRIES,
                )
            )

    def _drop_tools(self) -> None:
        if self.schemas:
            self.schemas = {}
        self.registry.unregister_source(SOURCE)

    def _handler(self, name: str) -> Callable[[Any, ToolContext], Awaitable[str]]:
        async def handler(arguments: Any, ctx: ToolContext) -> str:
            return await self.call(name, dict(arguments))

        return handler

    # Calls ---------------------------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """One tool call on the shared session: the text result, ToolError to refuse, Retryable to retry."""
        client = self._client
        if client is None:
            raise RetryableToolError(_UNREACHABLE)
        try:
            result = await client.call_tool(name, arguments, read_timeout_seconds=self.timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise RetryableToolError(
                    f"the tool {name} did not answer within {self.timeout:g} s"
                ) from None
            if exc.code == CONNECTION_CLOSED or (
                exc.code == INTERNAL_ERROR and exc.message == _HTTP_ERROR_MESSAGE
            ):
                raise RetryableToolError(_UNREACHABLE) from None
            raise ToolError(_tidy(exc.message) or f"the tool {name} failed") from None
        except TimeoutError:
            raise RetryableToolError(f"the tool {name} did not answer within {self.timeout:g} s") from None
        except (httpx2.TransportError, OSError) as exc:
            raise RetryableToolError(_UNREACHABLE) from exc
        text = _result_text(result)
        if result.is_error:
            raise ToolError(_tidy(text) or f"the tool {name} failed")
        return text


def _result_text(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content omitted]")
    if not parts and result.structured_content is not None:
        return dumps(result.structured_content)
    return "\n".join(parts)


def _tidy(message: str) -> str:
    """The SDK's error text without its prefix and pydantic's help links: the model repeats it."""
    message = _SDK_ERROR_PREFIX.sub("", message.strip())
    return _PYDANTIC_URL.sub("", message).strip()


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The listed input schema without the titles pydantic adds (noise in every prompt)."""
    cleaned = {k: v for k, v in schema.items() if k != "title"}
    props = cleaned.get("properties")
    if isinstance(props, dict):
        cleaned["properties"] = {
            key: ({k: v for k, v in prop.items() if k != "title"} if isinstance(prop, dict) else prop)
            for key, prop in props.items()
        }
    cleaned.setdefault("type", "object")
    cleaned.setdefault("properties", {})
    return cleaned


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for logs and readiness."""
    leaf = _leaf(exc)
    if isinstance(leaf, TimeoutError):
        return "no answer in time"
    if isinstance(leaf, httpx2.ConnectError | ConnectionError):
        return "connection refused or unreachable"
    if isinstance(leaf, httpx2.TransportError):
        return f"connection failed ({type(leaf).__name__})"
    if isinstance(leaf, MCPError):
        return f"MCP error {leaf.code}: {_tidy(leaf.message)[:120]}"
    return type(leaf).__name__


def _mask(url: str) -> str:
    return re.sub(r"(://)([^/@]+)@", r"\1***@", url)
