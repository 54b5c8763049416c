"""Running the tasks: each `trials` times, `concurrency` trials at once, each in a world of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from msev15.agent.model import ModelClient
from msev15.eval.chat import ChatSession, TurnRecord
from msev15.eval.judge import Verdict, judge
from msev15.eval.models import SimulatedCustomer
from msev15.eval.tasks import Task
from msev15.eval.world import Trial

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TrialResult:
    task_id: str
    number: int
    verdict: Verdict
    turns: list[TurnRecord]
    tokens: int | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def tool_calls(self) -> int:
        return sum(len(t.calls) + len(t.refused) + len(t.approvals) for t in self.turns)


@dataclass(slots=True)
class TaskResult:
    task: Task
    not_attempted: str | None  # why not, or None when it ran
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def attempted(self) -> bool:
        return self.not_attempted is None

    @property
    def successes(self) -> int:
        return sum(1 for t in self.trials if t.passed)

    @property
    def passed(self) -> bool | None:
        return None if not self.attempted else all(t.passed for t in self.trials)


@dataclass(slots=True)
class EvalRun:
    model: str
    offline: bool
    trials: int
    target: str
    user_model: bool
    results: list[TaskResult]
    seconds: float = 0.0


class World(Protocol):
    """Where trials run: in process (fresh database each) or at a running service's URL."""

    async def prepare(self) -> None: ...

    def cannot_run(self, task: Task) -> str | None:
        """Why this world cannot run the task (it is then listed as not attempted), or None."""
        ...

    def trial(self, task: Task) -> contextlib.AbstractAsyncContextManager[Trial]: ...


Progress = Callable[[TrialResult], None]


async def run_tasks(
    tasks: Sequence[Task],
    world: World,
    *,
    model: str,
    offline: bool,
    trials: int = 1,
    concurrency: int = 4,
    target: str = "in process",
    user_model: ModelClient | None = None,
    progress: Progress | None = None,
) -> EvalRun:
    """Every attempted task `trials` times; with the offline model, only tasks tagged `offline`."""
    started = time.perf_counter()
    await world.prepare()
    results = [TaskResult(task, _why_not(task, world, offline)) for task in tasks]
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(result: TaskResult, number: int) -> None:
        async with gate:
            trial = await _trial(result.task, number, world, offline, user_model)
        result.trials.append(trial)
        if progress is not None:
            progress(trial)

    jobs = [one(r, n) for n in range(1, trials + 1) for r in results if r.attempted]
    await asyncio.gather(*jobs)
    for result in results:
        result.trials.sort(key=lambda t: t.number)
    run = EvalRun(model, offline, trials, target, user_model is not None, results)
    run.seconds = time.perf_counter() - started
    return run


async def _trial(
    task: Task,
    number: int,
    world: World,
    offline: bool,
    user_model: ModelClient | None,
) -> TrialResult:
    started = time.perf_counter()
    turns: list[TurnRecord] = []
    tokens: int | None = None
    try:
        async with world.trial(task) as trial:
            session = ChatSession(trial.http, task.customer, task.transport, trial.api_key)
            async for message in _messages(task, turns, user_model):
                turns.append(await session.send(message))
            tokens = trial.model.tokens if trial.model is not None else None
        before, after = trial.before, trial.after()
    except Exception as exc:  # the trial could not run: a failure of its own, the others go on
        log.debug("trial %s #%d failed to run", task.id, number, exc_info=True)
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f for f in reversed(frames) if "/asyncio/" not in f.filename), frames[-1])
        what = f"{type(exc).__name__}: {exc}".rstrip(": ")
        verdict = Verdict(failures=[f"the trial could not run: {what} (at {where.filename}:{where.lineno})"])
        return TrialResult(task.id, number, verdict, turns, tokens, time.perf_counter() - started)
    verdict = judge(task, turns, before, after, offline=offline and user_model is None)
    return TrialResult(task.id, number, verdict, turns, tokens, time.perf_counter() - started)


async def _messages(
    task: Task, turns: list[TurnRecord], user_model: ModelClient | None
) -> AsyncIterator[str]:
    """The customer's messages: the scripted turns, or a simulated customer's replies to the answers."""
    if user_model is None:
        for turn in task.turns:
            yield turn.say
        return
    customer = SimulatedCustomer(user_model, task, max_turns=max(6, 2 * len(task.turns)))
    while True:
        message = await customer.next_message(turns[-1].answer if turns else None)
        if message is None:
            return
        yield message


def _why_not(task: Task, world: World, offline: bool) -> str | None:
    if offline and not task.offline:
        return "the offline model cannot do it (llm-only)"
    return world.cannot_run(task)
