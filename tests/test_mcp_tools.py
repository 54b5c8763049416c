"""The agent's MCP client against the real bundled server as a subprocess: calls, outages, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from quart import Quart
from quart.typing import TestClientProtocol

from msev15 import create_app
from msev15.settings import Settings
from msev15.tools.mcp import SOURCE, McpToolProvider
from msev15.tools.registry import Tool, ToolArgs, ToolContext, ToolRegistry
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import MakeModelSettings, make_settings
from tests.helpers import eventually, free_port
from tests.mcp_fixtures import McpProcess, make_orders_db, running_mcp
from tests.openai_server import Reply, ScriptedOpenAI

MCP_TOOLS = {"search_products", "get_product", "get_policy", "search_faq"}
CTX = ToolContext(tenant_id="default", session_id="s", request_id="r")


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_orders_db(tmp_path_factory.mktemp("mcp-tools") / "shop.db")


@pytest.fixture(scope="module")
def shared_mcp(shop_db: Path) -> Iterator[McpProcess]:
    """One server for the tests that do not stop it."""
    with running_mcp(shop_db) as server:
        yield server


@pytest.fixture
def own_mcp(shop_db: Path) -> Iterator[McpProcess]:
    """A server this test may kill or restart."""
    with running_mcp(shop_db) as server:
        yield server


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[Quart]:
    application = create_app(settings)
    async with application.test_app() as test_app:
        yield test_app.app  # type: ignore[attr-defined]


def found(app: Quart) -> Services:
    services: Services = app.extensions[EXTENSION_KEY]
    return services


def mcp_names(app: Quart) -> set[str]:
    return MCP_TOOLS & set(found(app).tools.names())


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def readiness(client: TestClientProtocol) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health/readiness")
    return response.status_code, await response.get_json()


# Through the agent over HTTP -----------------------------------------------------------


async def test_agent_lists_and_calls_mcp_tools(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, shared_mcp: McpProcess
) -> None:
    openai_server.push(
        Reply.call("get_policy", {"topic": "returns"}), Reply.say("You can return items within 30 days.")
    )
    async with running_app(make_model_settings(mcp_server_url=shared_mcp.url)) as app:
        assert mcp_names(app) == MCP_TOOLS  # registered before the app serves
        client = app.test_client()
        response = await client.post("/api/v1/chat/stream", json={"session_id": "p", "message": "returns?"})
        events = sse_events(await response.get_data())
        result = next(e for e in events if e["type"] == "tool_result")
        assert result["name"] == "get_policy" and result["ok"] is True
        assert orjson.loads(result["content"])["topic"] == "returns"
        assert events[-1]["type"] == "done"
        assert events[-1]["message"] == "You can return items within 30 days."

        offered = {t["function"]["name"]: t["function"] for t in openai_server.requests[0]["tools"]}
        assert MCP_TOOLS <= set(offered)
        assert offered["get_policy"]["parameters"]["properties"]["topic"]["enum"] == [
            "returns",
            "shipping",
            "warranty",
            "privacy",
        ]
        tool_message = openai_server.requests[1]["messages"][-1]
        assert tool_message["role"] == "tool" and "30 days" in tool_message["content"]

        status, body = await readiness(client)
        assert status == 200 and body["checks"]["mcp"] == "ok"


async def test_remote_refusal_becomes_ok_false(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, shared_mcp: McpProcess
) -> None:
    openai_server.push(Reply.call("get_product", {"sku": "NOPE-1"}), Reply.say("We do not have that one."))
    async with running_app(make_model_settings(mcp_server_url=shared_mcp.url)) as app:
        body = await (
            await app.test_client().post("/api/v1/chat", json={"session_id": "n", "message": "NOPE-1?"})
        ).get_json()
        assert body["tool_calls"][0]["ok"] is False
        assert body["message"] == "We do not have that one."
        seen = openai_server.requests[1]["messages"][-1]["content"]
        assert "Not found" in seen and "Error executing tool" not in seen


# Outages -------------------------------------------------------------------------------


async def test_server_absent_at_start_then_started(
    tmp_path: Path, shop_db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    # Uncached readiness: this test follows MCP's state as it changes, not the probe cache.
    settings = make_settings(tmp_path, mcp_server_url=f"http://127.0.0.1:{port}/mcp", health_cache_seconds=0)
    async with running_app(settings) as app:
        assert any("unavailable" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        client = app.test_client()
        assert mcp_names(app) == set()
        status, body = await readiness(client)
        assert status == 200 and body["status"] == "degraded"
        assert body["checks"]["mcp"].startswith("unavailable: ")

        with running_mcp(shop_db, port=port):
            await eventually(lambda: mcp_names(app) == MCP_TOOLS, within=10, what="the MCP tools listed")
            status, body = await readiness(client)
            assert body["checks"]["mcp"] == "ok"


async def test_server_killed_mid_session(
    make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI, own_mcp: McpProcess
) -> None:
    async with running_app(make_model_settings(mcp_server_url=own_mcp.url)) as app:
        client = app.test_client()
        openai_server.push(Reply.call("get_policy", {"topic": "shipping"}), Reply.say("3-5 days."))
        first = await (
            await client.post("/api/v1/chat", json={"session_id": "k", "message": "ship?"})
        ).get_json()
        assert first["tool_calls"][0]["ok"] is True

        own_mcp.kill()
        # The model already holds the tool list of this turn and calls it: the turn still answers.
        openai_server.push(
            Reply.call("get_policy", {"topic": "warranty"}),
            Reply.say("Sorry, I cannot look that up right now."),
        )
        response = await client.post("/api/v1/chat", json={"session_id": "k", "message": "warranty?"})
        assert response.status_code == 200
        body = await response.get_json()
        assert body["tool_calls"][0]["ok"] is False
        assert body["message"] == "Sorry, I cannot look that up right now."
        assert body["message_count"] == 4

        await eventually(lambda: mcp_names(app) == set(), within=10, what="the MCP tools dropped")
        assert "get_current_time" in found(app).tools.names()  # local tools stay
        status, ready = await readiness(client)
        assert status == 200 and ready["status"] == "degraded"
        assert ready["checks"]["mcp"].startswith("unavailable: ")

        # Back on the same port: the tools return without a restart of the service.
        own_mcp.start()
        await eventually(lambda: mcp_names(app) == MCP_TOOLS, within=10, what="the MCP tools listed")
        openai_server.push(Reply.call("get_policy", {"topic": "privacy"}), Reply.say("We never sell data."))
        again = await (
            await client.post("/api/v1/chat", json={"session_id": "k", "message": "data?"})
        ).get_json()
        assert again["tool_calls"][0]["ok"] is True


async def test_required_mcp_down_makes_readiness_unhealthy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, mcp_server_required=True)
    async with running_app(settings) as app:
        status, body = await readiness(app.test_client())
        assert status == 503
        assert body["status"] == "unhealthy"
        assert body["checks"]["mcp"].startswith("unavailable: ")


async def test_not_required_mcp_down_only_degrades(client: TestClientProtocol) -> None:
    status, body = await readiness(client)
    assert status == 200 and body["status"] == "degraded"
    assert any(w.startswith("mcp: unavailable") for w in body["warnings"])


# The provider on its own ----------------------------------------------------------------


async def test_slow_tool_past_the_timeout(tmp_path: Path, shop_db: Path) -> None:
    with running_mcp(shop_db, slow_tool=True) as server:
        settings = make_settings(tmp_path, mcp_server_url=server.url, mcp_timeout_seconds=0.5)
        registry = ToolRegistry(retry_base_seconds=0.05)
        provider = McpToolProvider(settings, registry)
        await provider.start()
        try:
            assert "slow_echo" in registry.names()
            started = time.monotonic()
            slow = await registry.call("slow_echo", {"text": "hi", "seconds": 5}, CTX)
            elapsed = time.monotonic() - started
            assert slow.ok is False
            assert slow.error == "the tool slow_echo did not answer within 0.5 s"
            assert elapsed < 4.5  # three attempts of 0.5 s and short backoffs, not the tool's 5 s
            # The shared session survived the abandoned calls.
            fast = await registry.call("slow_echo", {"text": "hi", "seconds": 0}, CTX)
            assert fast.ok is True and orjson.loads(fast.content or "") == {"echo": "hi"}
            assert await provider.check() == "ok"
        finally:
            await provider.close()


async def test_local_tool_wins_a_name_collision(tmp_path: Path, shared_mcp: McpProcess) -> None:
    class _Topic(ToolArgs):
        topic: str

    async def local_policy(args: _Topic, ctx: ToolContext) -> str:
        return "local"

    registry = ToolRegistry()
    registry.register(Tool("get_policy", "Local policies.", _Topic, local_policy))
    provider = McpToolProvider(make_settings(tmp_path, mcp_server_url=shared_mcp.url), registry)
    await provider.start()
    try:
        policy, search = registry.get("get_policy"), registry.get("search_faq")
        assert policy is not None and policy.source == "local"
        assert search is not None and search.source == SOURCE and search.args_model is None
        assert search.retries > 0 and search.parameters is not None
        assert "title" not in search.parameters
        result = await registry.call("search_faq", {"query": "refund"}, CTX)
        assert result.ok and "refund" in (result.content or "")
    finally:
        await provider.close()
    assert registry.get("get_policy") is not None  # the local one is untouched
    assert registry.get("search_faq") is None


async def test_calls_while_disconnected_fail_plainly(tmp_path: Path) -> None:
    registry = ToolRegistry(retry_base_seconds=0.01)
    provider = McpToolProvider(make_settings(tmp_path), registry)
    await provider.start()
    try:
        assert not provider.connected
        assert (await provider.check()).startswith("unavailable: ")
        registry.register(
            Tool(
                "search_faq", "x", None, lambda a, c: provider.call("search_faq", a), source=SOURCE, retries=1
            )
        )
        result = await registry.call("search_faq", {"query": "x"}, CTX)
        assert result.ok is False and result.error == "the shop knowledge server is not reachable right now"
    finally:
        await provider.close()


async def test_close_ends_the_owner_task(tmp_path: Path, shared_mcp: McpProcess) -> None:
    registry = ToolRegistry()
    provider = McpToolProvider(make_settings(tmp_path, mcp_server_url=shared_mcp.url), registry)
    await provider.start()
    assert provider.connected and MCP_TOOLS <= set(registry.names())
    task = provider._task
    await provider.close()
    assert task is not None and task.done() and not task.cancelled()
    assert not provider.connected and MCP_TOOLS.isdisjoint(registry.names())
    assert await provider.check() == "unavailable: closed"


async def test_app_shutdown_leaves_the_mcp_session_before_cancelling_background_work(
    tmp_path: Path, shared_mcp: McpProcess
) -> None:
    """At shutdown the MCP client's own task ends its session (not cancelled inside the SDK's
    session, where it could wait for ever), and shutdown is done well within its bound."""
    for attempt in range(3):
        app = create_app(make_settings(tmp_path / str(attempt), mcp_server_url=shared_mcp.url))
        async with app.test_app() as test_app:
            services = found(test_app.app)  # type: ignore[attr-defined]
            assert services.mcp is not None and services.mcp.connected
            task = services.mcp._task
            started = time.monotonic()
            await asyncio.wait_for(services.close(), timeout=15)
            assert task is not None and task.done() and not task.cancelled()
            assert time.monotonic() - started < 10
