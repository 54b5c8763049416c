"""A Hypothesis state machine over end users, sessions and credentials.

Callers (the shop's key, client tokens of two customers, a visitor token, and a forged token)
chat, read, list and delete at random. A plain model of who owns what predicts every answer;
the invariant is that nobody reads or changes another user's conversation.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from msev15 import create_app
from tests.conftest import make_settings

KEY = "machine-key"
SECRET = "machine-secret-0123456789-abcdefghij"
SESSIONS = ["s1", "s2", "s3"]
CALLERS = ["shop", "alice", "bob", "visitor", "forged"]


class Ownership(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="owners-"))
        app = create_app(
            make_settings(self.folder, api_keys=f"{KEY}:shop", client_token_secret=SECRET, public_chat=True),
            public_chat_tenant="shop",
        )
        self.running = app.test_app()
        self.loop.run_until_complete(self.running.__aenter__())
        self.client = self.running.test_client()
        self.headers: dict[str, dict[str, str]] = {"shop": {"Authorization": f"Bearer {KEY}"}}
        self.owner: dict[str, str | None] = {}  # session → its owner (None: the shop's own)
        self.turns: dict[str, int] = {}  # session → turns stored

    def _call(self, method: str, path: str, caller: str, **kwargs: Any) -> Any:
        async def go() -> tuple[int, Any]:
            response = await self.client.open(path, method=method, headers=self.headers[caller], **kwargs)
            return response.status_code, await response.get_json()

        return self.loop.run_until_complete(go())

    @initialize()
    def credentials(self) -> None:
        for user in ("alice", "bob"):
            status, body = self._call("POST", "/api/v1/client-tokens", "shop", json={"user_id": user})
            assert status == 201
            self.headers[user] = {"Authorization": f"Bearer {body['token']}"}
        status, body = self._call("POST", "/api/v1/visitor-tokens", "shop")
        assert status == 201
        self.user_of = {"alice": "alice", "bob": "bob", "visitor": body["user_id"]}
        self.headers["visitor"] = {"Authorization": f"Bearer {body['token']}"}
        forged = jwt.encode(
            {"tid": "shop", "sub": "alice", "exp": 4_000_000_000}, "x" * 40, algorithm="HS256"
        )
        self.headers["forged"] = {"Authorization": f"Bearer {forged}"}

    def _sees(self, caller: str, session: str) -> bool:
        return caller == "shop" or (session in self.owner and self.owner[session] == self.user_of[caller])

    @rule(caller=st.sampled_from(CALLERS), session=st.sampled_from(SESSIONS))
    def chat(self, caller: str, session: str) -> None:
        status, body = self._call(
            "POST", "/api/v1/chat", caller, json={"session_id": session, "message": "what can you do?"}
        )
        if caller == "forged":
            assert status == 401
        elif session not in self.owner:
            assert status == 200, body
            self.owner[session] = None if caller == "shop" else self.user_of[caller]
            self.turns[session] = 1
        elif self._sees(caller, session):
            assert status == 200, body
            self.turns[session] += 1
        else:
            assert status == 404 and body["error"]["type"] == "not_found"

    @rule(caller=st.sampled_from(CALLERS), session=st.sampled_from(SESSIONS))
    def history(self, caller: str, session: str) -> None:
        status, body = self._call("GET", f"/api/v1/sessions/{session}/history", caller)
        if caller == "forged":
            assert status == 401
        elif session in self.owner and self._sees(caller, session):
            assert status == 200 and body["user_id"] == self.owner[session]
            assert len(body["messages"]) == 2 * self.turns[session]
        else:
            assert status == 404

    @rule(caller=st.sampled_from(CALLERS), session=st.sampled_from(SESSIONS))
    def delete(self, caller: str, session: str) -> None:
        status, _ = self._call("DELETE", f"/api/v1/sessions/{session}", caller)
        if caller == "forged":
            assert status == 401
        elif session in self.owner and self._sees(caller, session):
            assert status == 200
            del self.owner[session], self.turns[session]
        else:
            assert status == 404

    @invariant()
    def everyone_lists_exactly_their_own(self) -> None:
        if not hasattr(self, "user_of"):
            return
        for caller in ("shop", "alice", "bob", "visitor"):
            status, body = self._call("GET", "/api/v1/sessions", caller)
            assert status == 200
            expected = {s for s in self.owner if self._sees(caller, s)}
            assert {s["session_id"] for s in body["sessions"]} == expected

    def teardown(self) -> None:
        self.loop.run_until_complete(self.running.__aexit__(None, None, None))
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)


Ownership.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_nobody_reaches_another_users_conversation() -> None:
    Ownership.TestCase().runTest()
