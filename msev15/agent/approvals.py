"""Pending approvals of consequential tool calls, kept in the session's metadata."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from msev15.jsonio import iso

PENDING_KEY = "pending_approvals"
ANSWERED_KEY = "_answered_approvals"
_ANSWERED_KEPT = 100
APPROVAL_ID_PREFIX = "apr_"  # a decided call reaches the model under its approval's id
DECLINED = "declined by the customer"  # the error of a declined action's tool_result (API.md)
EXPIRED = "this confirmation expired before it was answered; ask again if it is still wanted"

Decision = Literal["approved", "declined", "expired"]

# What a whole typed message must be to answer the pending actions (API.md "Confirmation").
# The service reads it, never the model; the first word of each list is the one the request names.
YES_WORDS: tuple[str, ...] = (
    "yes", "y", "yes please", "yep", "yeah", "yup", "sure", "ok", "okay", "confirm", "confirmed",
    "approve", "approved", "go ahead", "do it", "please do", "yes do it", "yes go ahead", "yes confirm",
    "ok go ahead", "okay go ahead", "sure go ahead", "yes thanks", "yes thank you", "please go ahead",
)  # fmt: skip
NO_WORDS: tuple[str, ...] = (
    "no", "n", "nope", "nah", "decline", "declined", "no thanks", "no thank you", "don't", "do not",
    "don't do it", "do not do it", "stop", "no don't", "no stop", "not now", "no leave it", "leave it",
)  # fmt: skip
_YES, _NO = frozenset(YES_WORDS), frozenset(NO_WORDS)
_TRAILING = re.compile(r"[\s.!]+$")
_SEPARATORS = re.compile(r"\s*,\s*|\s+")


def typed_answer(text: str) -> bool | None:
    """True for an unambiguous typed yes, False for an unambiguous no, None for anything else.

    The whole message must be one of the phrases: case, surrounding spaces, trailing "." and "!",
    and commas between words ("yes, please") are ignored; "yes, but change the address" is neither.
    """
    words = _SEPARATORS.sub(" ", _TRAILING.sub("", text.strip().lower().replace("\u2019", "'"))).strip()
    if words in _YES:
        return True
    if words in _NO:
        return False
    return None


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
        pending = Pending(APPROVAL_ID_PREFIX + secrets.token_hex(8), name, arguments, summary, now + ttl)
        self.pending[pending.id] = pending
        self.created.append(pending)
        return pending

    def take(self, answers: list[tuple[str, bool]], now: float) -> list[tuple[Pending, Decision]]:
        """Remove the answered approvals; all-or-nothing, so a bad id changes nothing."""
        self.check(answers, now)
        taken: list[tuple[Pending, Decision]] = []
        for approval_id, approve in answers:
            decision: Decision = "approved" if approve else "declined"
            taken.append((self.pending.pop(approval_id), decision))
            self._remember(approval_id, decision)
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

    def take_all(self, approve: bool, now: float) -> list[tuple[Pending, Decision]]:
        """Everything pending, answered at once by a typed message; an expired action never runs."""
        taken: list[tuple[Pending, Decision]] = []
        for pending in self.pending.values():
            decision: Decision = "declined"
            if approve:
                decision = "approved" if pending.expires >= now else "expired"
            taken.append((pending, decision))
            self._remember(pending.id, decision)
        self.pending.clear()
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
    """The text that ends a turn whose actions wait for the customer; it names the typed answers."""
    yes, no = YES_WORDS[0], NO_WORDS[0]
    if len(created) == 1:
        return f'Please confirm: {created[0].summary}. Reply "{yes}" to go ahead or "{no}" to leave it.'
    lines = "\n".join(f"{n}. {p.summary}" for n, p in enumerate(created, 1))
    return (
        f"Please confirm these actions:\n{lines}\n"
        f'Reply "{yes}" to go ahead with all of them or "{no}" to leave them all.'
    )
