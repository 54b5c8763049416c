"""get_current_time: a small real tool, so the tool path is exercised end to end without a database."""

from __future__ import annotations

from datetime import UTC, datetime

from msev15.tools.registry import Tool, ToolArgs, ToolContext


class _NoArgs(ToolArgs):
    pass


async def _current_time(_: _NoArgs, ctx: ToolContext) -> dict[str, str]:
    now = datetime.now(UTC)
    return {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}


def builtin_tools() -> list[Tool]:
    return [
        Tool(
            name="get_current_time",
            description="Current date and time in UTC. Use it for questions about today's date or time.",
            args_model=_NoArgs,
            handler=_current_time,
        )
    ]
