"""ToolRegistry: validation, timeouts, retries, containment, collisions, observers."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from msev15.tools.registry import (
    RetryableToolError,
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
)

CTX = ToolContext("tenant", "session", "req")


class EchoArgs(ToolArgs):
    word: str = Field(min_length=1, max_length=10)
    times: int = Field(1, ge=1, le=3)


async def echo(args: EchoArgs, ctx: ToolContext) -> dict[str, Any]:
    return {"echo": " ".join([args.word] * args.times), "tenant": ctx.tenant_id}


def registry(**kw: Any) -> ToolRegistry:
    reg = ToolRegistry(default_timeout=0.2, max_result_chars=200, retry_base_seconds=0.001, **kw)
    reg.register(Tool("echo", "Echo a word.", EchoArgs, echo))
    return reg


async def test_spec_is_the_pydantic_schema() -> None:
    spec = registry().specs()[0]
    assert spec["type"] == "function" and spec["function"]["name"] == "echo"
    params = spec["function"]["parameters"]
    assert params["required"] == ["word"] and params["properties"]["times"]["maximum"] == 3
    assert params["additionalProperties"] is False


async def test_valid_call_and_tenant_from_context() -> None:
    result = await registry().call("echo", '{"word": "hi", "times": 2, "tenant": "x"}', CTX)
    assert not result.ok and "tenant" in (result.error or "")  # unknown arguments are refused
    result = await registry().call("echo", '{"word": "hi", "times": 2}', CTX)
    assert result.ok and result.content == '{"echo":"hi hi","tenant":"tenant"}'


async def test_invalid_arguments_become_refusals() -> None:
    reg = registry()
    for raw in ('{"word": ""}', '{"times": 9, "word": "a"}', "[1]", "{oops", '{"word": 5}'):
        result = await reg.call("echo", raw, CTX)
        assert result.ok is False and result.error


async def test_unknown_tool() -> None:
    result = await registry().call("nope", "{}", CTX)
    assert result == ToolResult(False, None, "there is no tool called 'nope'", result.duration_ms)


async def test_refusal_crash_and_timeout_are_contained() -> None:
    reg = registry()

    async def refuse(_: Any, __: ToolContext) -> str:
        raise ToolError("order is already shipped")

    async def crash(_: Any, __: ToolContext) -> str:
        raise KeyError("internal detail")

    async def slow(_: Any, __: ToolContext) -> str:
        await asyncio.sleep(5)
        return "never"

    for name, handler in (("refuse", refuse), ("crash", crash), ("slow", slow)):
        reg.register(Tool(name, name, None, handler, parameters={"type": "object"}))
    assert (await reg.call("refuse", "{}", CTX)).error == "order is already shipped"
    crashed = await reg.call("crash", "{}", CTX)
    assert crashed.error == "the tool failed unexpectedly" and "internal detail" not in str(crashed)
    timed = await reg.call("slow", "{}", CTX)
    assert timed.ok is False and "did not answer within 0.2 s" in (timed.error or "")


async def test_retryable_failures_are_retried_within_bound() -> None:
    reg = registry()
    attempts = 0

    async def flaky(_: Any, __: ToolContext) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableToolError("connection reset")
        return "ok now"

    reg.register(Tool("flaky", "", None, flaky, parameters={"type": "object"}, retries=2))
    assert (await reg.call("flaky", "{}", CTX)).content == "ok now"
    attempts = -10
    result = await reg.call("flaky", "{}", CTX)
    assert result.ok is False and result.error == "connection reset" and attempts == -7


async def test_large_results_are_clipped() -> None:
    reg = registry()

    async def big(_: Any, __: ToolContext) -> str:
        return "x" * 1000

    reg.register(Tool("big", "", None, big, parameters={"type": "object"}))
    result = await reg.call("big", None, CTX)
    assert result.content is not None and len(result.content) < 230 and result.content.endswith("[truncated]")


async def test_local_tool_wins_collisions_and_remote_tools_come_and_go() -> None:
    reg = registry()
    remote = Tool("echo", "remote echo", None, echo, parameters={"type": "object"}, source="mcp")
    assert reg.register(remote) is False
    assert reg.get("echo") is not None and reg.get("echo").source == "local"  # type: ignore[union-attr]
    reg.register(Tool("search", "", None, echo, parameters={"type": "object"}, source="mcp"))
    assert "search" in [s["function"]["name"] for s in reg.specs()]
    reg.unregister_source("mcp")
    assert reg.names() == ["echo"]


async def test_observers_see_every_call() -> None:
    seen: list[tuple[str, dict[str, Any], bool]] = []

    class Recorder:
        async def tool_called(
            self, ctx: ToolContext, name: str, arguments: dict[str, Any], result: ToolResult
        ) -> None:
            seen.append((name, arguments, result.ok))

    reg = registry()
    reg.observers.append(Recorder())
    await reg.call("echo", '{"word": "a"}', CTX)
    await reg.call("echo", '{"word": ""}', CTX)
    assert seen == [("echo", {"word": "a", "times": 1}, True), ("echo", {"word": ""}, False)]
