"""Tool, ToolContext and the registry that validates, times out and contains every tool call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from msev15.jsonio import dumps, loads
from msev15.metrics import metrics
from msev15.tracing import mark_error, span

log = logging.getLogger(__name__)


class ToolError(Exception):
    """A refusal with a plain reason the model can repeat to the customer."""


class RetryableToolError(ToolError):
    """A transient failure (connection, timeout, 503) worth another try."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who is asking: the tenant (and a verified email) always come from here, never from the model."""

    tenant_id: str
    session_id: str
    request_id: str
    user_id: str | None = None
    verified_email: str | None = None  # the shop verified it: order and email tools act for it alone


@dataclass(frozen=True, slots=True)
class ToolResult:
    ok: bool
    content: str | None = None
    error: str | None = None
    duration_ms: float = 0.0

    def for_model(self) -> str:
        """What the model reads back: the data, or the refusal wrapped so it is not mistaken for data."""
        if self.ok:
            return self.content or ""
        return dumps({"ok": False, "error": self.error})


class ToolArgs(BaseModel):
    """Base for argument models: unknown arguments are a model mistake, not something to ignore."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Handler = Callable[[Any, ToolContext], Awaitable[Any]]
Precheck = Callable[[Any, ToolContext], Awaitable[None]]
Summary = Callable[[dict[str, Any]], str]


@dataclass(slots=True)
class Tool:
    """A callable the model may use, with every fact about it in one place.

    Args:
        name: the exact name the model sees.
        description: what the model reads to decide when to call it.
        args_model: pydantic model; its JSON schema is the tool's parameters.
        handler: `async (validated_args, ctx) -> str | dict | list`; raise ToolError to refuse.
        consequential: changes the world, so it waits for the customer's approval.
        summary: the one sentence the customer confirms, from the exact arguments.
        precheck: read-only `async (validated_args, ctx)` that raises a refusal when the rules
            would refuse the call right now (so nobody is asked to confirm the impossible).
        refusals: exception types of lower layers (say, OrderError) that mean a plain refusal.
        timeout: seconds, or None for the registry default.
        parameters: a ready JSON schema (remote tools) used instead of `args_model`'s.
        source: "local" or the name of the remote server, for collisions and logs.
    """

    name: str
    description: str
    args_model: type[BaseModel] | None
    handler: Handler
    consequential: bool = False
    summary: Summary | None = None
    precheck: Precheck | None = None
    refusals: tuple[type[Exception], ...] = ()
    timeout: float | None = None
    parameters: dict[str, Any] | None = None
    source: str = "local"
    retries: int = 0
    _spec: dict[str, Any] | None = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry, built once."""
        if self._spec is None:
            params = self.parameters
            if params is None:
                assert self.args_model is not None
                params = _clean_schema(self.args_model.model_json_schema())
            self._spec = {
                "type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": params},
            }
        return self._spec

    def validate(self, arguments: dict[str, Any]) -> Any:
        """Validated arguments: a model instance for local tools, the dict for remote ones."""
        if self.args_model is None:
            return arguments
        return self.args_model.model_validate(arguments)

    def describe(self, arguments: dict[str, Any]) -> str:
        """The approval card's sentence: the tool's own, or every argument spelled out."""
        if self.summary is not None:
            return self.summary(arguments)
        shown = ", ".join(f"{k}={v}" for k, v in arguments.items())
        return f"Run {self.name} ({shown})" if shown else f"Run {self.name}"


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return schema


class ToolObserver(Protocol):
    """Told about every finished call (the audit log listens here)."""

    async def tool_called(
        self, ctx: ToolContext, name: str, arguments: dict[str, Any], result: ToolResult
    ) -> None: ...


def parse_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """The model's argument string as a dict; anything else is a ToolError."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = loads(raw)
    except ValueError:
        raise ToolError("the tool arguments were not valid JSON") from None
    if not isinstance(value, dict):
        raise ToolError("the tool arguments must be a JSON object")
    return value


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)


class ToolRegistry:
    """Holds local and remote tools; every call comes back as a ToolResult, never an exception."""

    def __init__(
        self,
        default_timeout: float = 15.0,
        max_result_chars: int = 8000,
        retry_base_seconds: float = 0.2,
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self.default_timeout = default_timeout
        self.max_result_chars = max_result_chars
        self.retry_base_seconds = retry_base_seconds
        self.observers: list[ToolObserver] = []
        self._specs: list[dict[str, Any]] | None = None

    def register(self, tool: Tool) -> bool:
        """Add a tool. A local tool always wins a name collision with a remote one."""
        existing = self._tools.get(tool.name)
        if existing is not None and existing.source == "local" and tool.source != "local":
            log.warning(
                "remote tool %s from %s hidden by the local tool of that name", tool.name, tool.source
            )
            return False
        self._tools[tool.name] = tool
        self._specs = None
        return True

    def register_all(self, tools: Iterable[Tool]) -> None:
        for tool in tools:
            self.register(tool)

    def unregister_source(self, source: str) -> None:
        """Drop every tool a remote server provided (it went away)."""
        for name in [n for n, t in self._tools.items() if t.source == source]:
            del self._tools[name]
        self._specs = None

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        if self._specs is None:
            self._specs = [t.spec() for t in self._tools.values()]
        return self._specs

    def prepare(self, name: str, arguments: dict[str, Any]) -> tuple[Tool, Any, dict[str, Any]]:
        """Look up and validate; returns the tool, validated args and their plain-dict form."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"there is no tool called {name!r}")
        try:
            validated = tool.validate(arguments)
        except ValidationError as exc:
            raise ToolError(format_validation_error(exc)) from None
        plain = validated.model_dump(mode="json") if isinstance(validated, BaseModel) else dict(validated)
        return tool, validated, plain

    async def precheck(
        self, tool: Tool, validated: Any, plain: dict[str, Any], ctx: ToolContext
    ) -> ToolResult | None:
        """The refusal the rules would give this call right now, or None; reads only, changes nothing.

        Refusals are audited like calls. A precheck that cannot answer (slow, broken) lets the
        proposal through: the rules are checked again when the approved action runs.
        """
        if tool.precheck is None:
            return None
        started = time.perf_counter()
        refusals: tuple[type[Exception], ...] = (ToolError, *tool.refusals)
        try:
            async with asyncio.timeout(tool.timeout or self.default_timeout):
                await tool.precheck(validated, ctx)
        except refusals as exc:
            result = ToolResult(False, None, str(exc) or "the tool refused", _ms(started))
            await self._notify(ctx, tool.name, plain, result)
            return result
        except Exception:
            log.exception("precheck of %s failed", tool.name)
        return None

    async def call(
        self, name: str, raw_arguments: str | dict[str, Any] | None, ctx: ToolContext
    ) -> ToolResult:
        """Validate, run with a timeout and bounded retries, and contain every failure."""
        started = time.perf_counter()
        plain: dict[str, Any] = {}
        # A name the model made up is not a label: the registry's names are the bounded set.
        label = name if name in self._tools else "unknown"
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": label}
        with span(f"execute_tool {label}", attributes) as traced:
            outcome = "invalid"  # until the arguments are parsed and validated
            try:
                plain = parse_arguments(raw_arguments)
                tool, validated, plain = self.prepare(name, plain)
                outcome = "error"
                value = await self._run(tool, validated, ctx)
                result = ToolResult(True, self._clip(_render(value)), None, _ms(started))
                outcome = "ok"
            except _Refused as exc:
                outcome = "refused"
                result = ToolResult(False, None, str(exc) or "the tool refused", _ms(started))
            except _Exhausted as exc:
                outcome = "unavailable"
                result = ToolResult(False, None, str(exc) or "the tool failed", _ms(started))
            except ToolError as exc:
                result = ToolResult(False, None, str(exc) or "the tool failed", _ms(started))
            except Exception:  # a bug in a tool must not break the conversation
                log.exception("tool %s failed", name)
                outcome = "crashed"
                result = ToolResult(False, None, "the tool failed unexpectedly", _ms(started))
            if traced is not None:
                traced.set_attribute("msev15.tool.result", outcome)
                if outcome != "ok":
                    mark_error(traced, outcome)
        metrics().tool(label, outcome)
        await self._notify(ctx, name, plain, result)
        return result

    async def _run(self, tool: Tool, validated: Any, ctx: ToolContext) -> Any:
        timeout = tool.timeout or self.default_timeout
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(timeout):
                    return await tool.handler(validated, ctx)
            except tool.refusals as exc:
                raise _Refused(str(exc)) from None
            except TimeoutError:
                error: ToolError = RetryableToolError(
                    f"the tool {tool.name} did not answer within {timeout:g} s"
                )
            except RetryableToolError as exc:
                error = exc
            if attempt >= tool.retries:
                raise _Exhausted(str(error))
            await asyncio.sleep(self.retry_base_seconds * (2**attempt))
            attempt += 1

    async def _notify(
        self, ctx: ToolContext, name: str, arguments: dict[str, Any], result: ToolResult
    ) -> None:
        for observer in self.observers:
            try:
                await observer.tool_called(ctx, name, arguments, result)
            except Exception:
                log.exception("tool observer failed")

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_result_chars:
            return text
        return text[: self.max_result_chars] + " …[truncated]"


class _Refused(ToolError):
    """The tool's rules said no (one of its `refusals`)."""


class _Exhausted(ToolError):
    """Every allowed attempt timed out or found the tool's service unreachable."""


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return dumps(value)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
