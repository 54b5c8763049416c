"""Pending approvals of consequential tool calls, kept in the session's metadata."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from msev15.jsonio import iso

PENDING_KEY = "pending_approvals"
ANSWERED_KEY = "_answered_approvals"
_ANSWERED_KEPT = 100


@dataclass(slots=True)
class Pending:
    id: str
    name: str
    arguments: dict[str, Any]
    summary: str
    expires: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "summary": self.summary,
            "expires_at": iso(self.expires),
        }

    def record(self) -> dict[str, Any]:
        return {**self.public(), "expires": self.expires}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Pending:
        return cls(record["id"], record["name"], record["arguments"], record["summary"], record["expires"])


class ApprovalError(ValueError):
    """An answer names an approval that is unknown, expired or already answered."""


class ApprovalBook:
    """The session's pending approvals and the ids answered recently (so a repeat is told apart)."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.pending: dict[str, Pending] = {
            r["id"]: Pending.from_record(r) for r in metadata.get(PENDING_KEY, []) if isinstance(r, dict)
        }
        self.answered: dict[str, str] = dict(metadata.get(ANSWERED_KEY, {}))
        self.created: list[Pending] = []

    def propose(self, name: str, arguments: dict[str, Any], summary: str, now: float, ttl: float) -> Pending:
        pending = Pending("apr_" + secrets.token_hex(8), name, arguments, summary, now + ttl)
        self.pending[pending.id] = pending
        self.created.append(pending)
        return pending

    def take(self, answers: list[tuple[str, bool]], now: float) -> list[tuple[Pending, bool]]:
        """Remove the answered approvals; all-or-nothing, so a bad id changes nothing."""
        self.check(answers, now)
        taken = []
        for approval_id, approve in answers:
            taken.append((self.pending.pop(approval_id), approve))
            self._remember(approval_id, "approved" if approve else "declined")
        return taken

    def check(self, answers: list[tuple[str, bool]], now: float) -> None:
        """Raise ApprovalError unless every answer names a distinct, pending, unexpired approval."""
        seen: set[str] = set()
        for approval_id, _ in answers:
            if approval_id in seen:
                raise ApprovalError(f"approval {approval_id} is answered twice in one request")
            seen.add(approval_id)
            if approval_id in self.answered:
                raise ApprovalError(
                    f"approval {approval_id} was already answered ({self.answered[approval_id]})"
                )
            found = self.pending.get(approval_id)
            if found is None:
                raise ApprovalError(f"approval {approval_id} is unknown in this session")
            if found.expires < now:
                raise ApprovalError(f"approval {approval_id} has expired; ask again")

    def take_all(self) -> list[Pending]:
        """Everything pending, declined because the customer moved on."""
        taken = list(self.pending.values())
        self.pending.clear()
        for pending in taken:
            self._remember(pending.id, "declined")
        return taken

    def _remember(self, approval_id: str, decision: str) -> None:
        self.answered[approval_id] = decision
        while len(self.answered) > _ANSWERED_KEPT:
            self.answered.pop(next(iter(self.answered)))

    def metadata(self, base: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in base.items() if k not in (PENDING_KEY, ANSWERED_KEY)}
        if self.pending:
            out[PENDING_KEY] = [p.record() for p in self.pending.values()]
        if self.answered:
            out[ANSWERED_KEY] = self.answered
        return out


def public_pending(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    return [Pending.from_record(r).public() for r in metadata.get(PENDING_KEY, [])]


def confirmation_request(created: list[Pending]) -> str:
    """The text that ends a turn whose actions wait for the customer."""
    if len(created) == 1:
        return f"Please confirm: {created[0].summary}. Reply with Confirm or Decline."
    lines = "\n".join(f"{n}. {p.summary}" for n, p in enumerate(created, 1))
    return f"Please confirm each of these actions:\n{lines}\nReply with Confirm or Decline for each."
