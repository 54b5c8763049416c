"""What one turn of the agent works with: its limits, its working set, and how it is refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from msev15.agent.approvals import ApprovalBook
from msev15.agent.events import Turn
from msev15.stores.sessions import Message, Session
from msev15.tools.registry import ToolContext


@dataclass(slots=True)
class AgentLimits:
    max_tool_rounds: int = 8
    turn_timeout: float = 120.0
    context_chars: int = 48_000
    require_confirmation: bool = True
    approval_ttl: float = 900.0


class DecisionRecorder(Protocol):
    """Told about every approval decision (the audit log listens here)."""

    async def decision(
        self, ctx: ToolContext, name: str, arguments: dict[str, Any], decision: str
    ) -> None: ...


@dataclass(slots=True)
class TurnState:
    """What a turn has produced so far, so an interrupted turn can still be stored honestly."""

    text: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return "".join(self.text)

    @property
    def produced(self) -> bool:
        return bool(self.text or self.tool_calls)


@dataclass(slots=True)
class TurnContext:
    """One turn's working set."""

    turn: Turn
    tool_ctx: ToolContext
    session: Session | None
    user: Message | None
    book: ApprovalBook
    base_metadata: dict[str, Any]
    state: TurnState = field(default_factory=TurnState)
    prelude: list[dict[str, Any]] = field(default_factory=list)  # decided calls, as the model must see them

    def metadata(self) -> dict[str, Any]:
        return self.book.metadata(self.base_metadata)


class TurnRefused(Exception):
    """A turn that cannot start (store down or saturated, someone else's session, bad approvals).

    Raised before the first event, so every transport can still answer with a plain error.
    """

    def __init__(self, code: str, message: str, retry_after: int | None = None, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.field = field
