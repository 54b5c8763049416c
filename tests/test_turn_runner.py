"""TurnRunner when its buffer fails: a turn with nowhere to put its events is refused before any
stream starts, and a buffer that cannot mark a turn finished leaves no turn behind as running."""

from __future__ import annotations

import pytest

from msev15.agent.events import Turn
from msev15.agent.loop import Agent
from msev15.agent.runner import TurnRunner
from msev15.agent.turn_state import AgentLimits, TurnRefused
from msev15.stores.sessions import MemorySessionStore
from msev15.stores.turns import MemoryTurnBuffer, TurnInfo
from msev15.tools.registry import ToolRegistry
from tests.helpers import eventually
from tests.scripted_model import Reply, ScriptedModel

TENANT, SESSION = "shop", "s-1"


class _Unopenable(MemoryTurnBuffer):
    async def open(self, info: TurnInfo) -> None:
        raise ConnectionError("the buffer's server went away")


class _Unfinishable(MemoryTurnBuffer):
    async def finish(self, turn_id: str) -> None:
        raise ConnectionError("the buffer's server went away")


def _agent(sessions: MemorySessionStore) -> Agent:
    model = ScriptedModel(Reply.say("one two three four", delay=0.01))
    return Agent(model, ToolRegistry(default_timeout=5.0), sessions, AgentLimits())


async def test_a_buffer_that_cannot_open_refuses_the_turn_and_keeps_nothing() -> None:
    sessions = MemorySessionStore()
    runner = TurnRunner(_agent(sessions), _Unopenable(keep_seconds=60))
    with pytest.raises(TurnRefused) as refused:
        await runner.start(Turn(TENANT, SESSION, "req-1", "hi", ()))
    assert (refused.value.code, refused.value.retry_after) == ("unavailable", 1)
    assert runner.running(TENANT, SESSION) is None
    assert await sessions.get(TENANT, SESSION) is None  # the cancelled turn had produced nothing
    async with sessions.lock(TENANT, SESSION):  # and it let go of the session
        pass


async def test_a_buffer_that_cannot_finish_a_turn_leaves_it_not_running() -> None:
    sessions = MemorySessionStore()
    runner = TurnRunner(_agent(sessions), _Unfinishable(keep_seconds=60))
    turn_id = await runner.start(Turn(TENANT, SESSION, "req-1", "hi", ()))
    assert runner.running(TENANT, SESSION) == turn_id

    await eventually(lambda: runner.running(TENANT, SESSION) is None, what="the turn to end")
    stored = await sessions.get(TENANT, SESSION)
    assert stored is not None and stored.messages[-1].content == "one two three four"
