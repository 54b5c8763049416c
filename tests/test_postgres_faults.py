"""PostgreSQL going away mid-turn: the tool refuses, readiness says so, and the service recovers alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from quart.typing import TestClientProtocol

from msev15 import create_app
from tests.conftest import MakeModelSettings
from tests.engines import new_database
from tests.helpers import eventually
from tests.openai_server import Reply, ScriptedOpenAI
from tests.postgres_server import PostgresServer

ALICE = "alice@example.com"
ORDER = {"order_id": "ORD-1001", "customer_email": ALICE}


@pytest.fixture(scope="module")
def restartable() -> Iterator[PostgresServer]:
    """A cluster of this module's own: its test stops and starts it."""
    with PostgresServer.running() as server:
        yield server


async def readiness(client: TestClientProtocol) -> tuple[int, dict[str, Any]]:
    response = await client.get("/health/readiness")
    return response.status_code, await response.get_json()


async def test_postgres_going_away_mid_turn_is_refused_cleanly_then_recovered_alone(
    restartable: PostgresServer, make_model_settings: MakeModelSettings, openai_server: ScriptedOpenAI
) -> None:
    url = await new_database(restartable, seeded=True)
    settings = make_model_settings(
        database_url=url, require_confirmation=False, health_cache_seconds=0, db_busy_timeout_ms=1000
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client: TestClientProtocol = test_app.test_client()
        assert (await readiness(client))[0] == 200
        openai_server.push(
            Reply.call("get_order", ORDER),
            Reply.call("cancel_order", {**ORDER, "reason": "x"}, hang=1.2),  # PostgreSQL stops meanwhile
            Reply.say("Sorry, I cannot reach the order system right now."),
        )
        turn = asyncio.create_task(client.post("/api/v1/chat", json={"session_id": "s", "message": "cancel"}))
        await eventually(lambda: len(openai_server.requests) >= 2, within=10, what="the first tool done")
        await asyncio.to_thread(restartable.stop)
        response = await turn
        body = await response.get_json()
        assert response.status_code == 200, body
        assert [(c["name"], c["ok"]) for c in body["tool_calls"]] == [
            ("get_order", True),
            ("cancel_order", False),
        ]
        refused = openai_server.requests[2]["messages"][-1]
        assert refused["role"] == "tool" and "unavailable" in refused["content"]
        status, ready = await readiness(client)
        assert status == 503 and ready["checks"]["database"].startswith("unavailable")

        await asyncio.to_thread(restartable.start)

        async def healthy() -> bool:
            return (await readiness(client))[0] == 200

        await eventually(healthy, within=10, what="readiness healthy again")
        openai_server.push(Reply.call("cancel_order", {**ORDER, "reason": "x"}), Reply.say("Cancelled."))
        again = await (
            await client.post("/api/v1/chat", json={"session_id": "s", "message": "again"})
        ).get_json()
        assert [(c["name"], c["ok"]) for c in again["tool_calls"]] == [("cancel_order", True)]
