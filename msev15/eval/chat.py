"""Talking to the agent as a customer does: over the service's HTTP API, in process or at a URL."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from msev15.eval.tasks import Customer

CONSEQUENTIAL_TOOLS = frozenset(
    {"create_order", "update_shipping_address", "cancel_order", "request_return", "send_email"}
)  # the tools that wait for the customer's typed yes (tests check this against the registry)


class Http(Protocol):
    """The one call the evaluation makes: POST JSON, get the status and the whole body as text."""

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]: ...


@dataclass(slots=True)
class TurnRecord:
    """What one customer message produced: the answer, the tool activity, the time it took."""

    customer: str
    answer: str = ""
    calls: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    approvals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)  # each tool result: name, ok, content, error
    error: str | None = None
    seconds: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "customer": self.customer,
            "answer": self.answer,
            "calls": [{"name": n, "arguments": a, "ok": ok} for n, a, ok in self.calls],
            "refused": [{"name": n, "reason": r} for n, r in self.refused],
            "approvals": [{"name": n, "arguments": a} for n, a in self.approvals],
            "error": self.error,
            "seconds": round(self.seconds, 4),
        }


class ChatSession:
    """One conversation of one customer; a verified customer chats under a client token."""

    def __init__(self, http: Http, customer: Customer, transport: str = "stream", api_key: str | None = None):
        self.http = http
        self.customer = customer
        self.transport = transport
        self.session_id = f"eval-{uuid.uuid4().hex}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._token_asked = False

    async def _authorise(self) -> None:
        if self._token_asked or not self.customer.verified:
            return
        self._token_asked = True
        status, text = await self.http.post(
            "/api/v1/client-tokens",
            {"user_id": f"eval-{uuid.uuid4().hex[:12]}", "customer_email": self.customer.email},
            self.headers,
        )
        if status != 201:
            raise RuntimeError(f"could not get a client token ({status}): {text[:200]}")
        self.headers = {"Authorization": f"Bearer {orjson.loads(text)['token']}"}

    async def send(self, message: str) -> TurnRecord:
        await self._authorise()
        record = TurnRecord(message)
        started = time.perf_counter()
        body = {"session_id": self.session_id, "message": message}
        if self.transport == "json":
            status, text = await self.http.post("/api/v1/chat", body, self.headers)
            _read_json(record, status, text)
        else:
            status, text = await self.http.post("/api/v1/chat/stream", body, self.headers)
            _read_stream(record, status, text)
        record.seconds = time.perf_counter() - started
        return record


def _read_json(record: TurnRecord, status: int, text: str) -> None:
    body = _loads(text)
    if status != 200:
        record.error = f"HTTP {status}: {body.get('error', text[:200])}"
        return
    record.answer = body.get("message", "")
    record.calls = [
        (c["name"], c.get("arguments", {}), bool(c.get("ok"))) for c in body.get("tool_calls", [])
    ]
    record.approvals = [(a["name"], a["arguments"]) for a in body.get("approvals_required", [])]


def _read_stream(record: TurnRecord, status: int, text: str) -> None:
    if status != 200:
        record.error = f"HTTP {status}: {_loads(text).get('error', text[:200])}"
        return
    events = [_loads(line[len("data: ") :]) for line in text.split("\n") if line.startswith("data: ")]
    called: dict[str, dict[str, Any]] = {}
    for event in events:
        kind = event.get("type")
        if kind == "tool_call":
            called[event["id"]] = event
        elif kind == "tool_result":
            record.results.append(
                {k: event.get(k) for k in ("name", "ok", "content", "error") if event.get(k) is not None}
            )
            if event["id"] in called:
                record.calls.append((event["name"], called[event["id"]]["arguments"], bool(event["ok"])))
            else:  # a result without its call: the rules refused the action at once
                record.refused.append((event["name"], str(event.get("error", ""))))
        elif kind == "approval_required":
            record.approvals.append((event["name"], event["arguments"]))
        elif kind == "done":
            record.answer = event.get("message", "")
        elif kind == "error":
            record.error = f"{event.get('code')}: {event.get('error')}"
    if not events or events[-1].get("type") not in ("done", "error"):
        record.error = record.error or "the stream ended without `done`"


def _loads(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
