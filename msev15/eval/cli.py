"""The command line: options, the progress bar on stderr, the report, and the exit status."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from msev15.agent.model import ModelClient
from msev15.agent.providers import create_model
from msev15.eval.report import json_report, table
from msev15.eval.run import EvalRun, TrialResult, World, run_tasks
from msev15.eval.tasks import TASKS_DIR, Task, TaskFileError, load_tasks
from msev15.eval.world import InProcessWorld, ServiceWorld
from msev15.settings import Settings, SettingsError, load_settings

USAGE_ERROR = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m msev15.eval",
        description="Run the shop's evaluation tasks against the configured model and report pass^k.",
    )
    parser.add_argument("--trials", type=int, default=1, metavar="K", help="trials per task (default 1)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="trials at once (default 4)")
    parser.add_argument(
        "--tasks", action="append", default=[], metavar="GLOB", help="only tasks whose id or file matches"
    )
    parser.add_argument(
        "--tasks-dir", type=Path, default=TASKS_DIR, metavar="DIR", help="where the tasks are"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report on stdout instead")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write a browsable report there")
    parser.add_argument(
        "--user-model", action="store_true", help="an LLM (the configured model) plays the customer"
    )
    parser.add_argument("--url", help="evaluate a running service at this base URL instead of in process")
    parser.add_argument("--api-key", help="with --url: the tenant's API key (when the service has API_KEYS)")
    parser.add_argument(
        "--db", type=Path, metavar="PATH", help="with --url: the service's SQLite orders database, to compare"
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.concurrency < 1:
        parser.error("--trials and --concurrency must be at least 1")
    if (args.api_key or args.db) and not args.url:
        parser.error("--api-key and --db go with --url")
    return args


class ProgressBar:
    """Trials done, on stderr: a bar redrawn in place on a terminal, a plain count line otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.stream = stream
        self.tty = stream.isatty()
        self._last_shown = -1

    def __call__(self, trial: TrialResult) -> None:
        self.done += 1
        self.failed += 0 if trial.passed else 1
        if self.tty:
            filled = round(30 * self.done / max(1, self.total))
            bar = "#" * filled + "-" * (30 - filled)
            end = "\n" if self.done == self.total else ""
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} trials, {self.failed} failed{end}")
        else:
            step = max(1, self.total // 10)
            if self.done % step and self.done != self.total:
                return
            self.stream.write(f"{self.done}/{self.total} trials, {self.failed} failed\n")
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
        tasks = load_tasks(args.tasks_dir, args.tasks)
    except (SettingsError, TaskFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the command's own output
        return USAGE_ERROR
    offline = settings.model_provider == "offline" and not args.url
    if args.user_model and settings.model_provider == "offline":
        print(  # noqa: T201
            "error: --user-model needs a model to play the customer: set OPENAI_BASE_URL (an"
            " OpenAI-compatible server such as Ollama or vLLM) or the AZURE_* settings",
            file=sys.stderr,
        )
        return USAGE_ERROR
    try:
        run = asyncio.run(_run(args, settings, tasks, offline))
    except (FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return USAGE_ERROR
    if args.html is not None:
        from msev15.eval.page import html_report

        args.html.write_text(html_report(run), "utf-8")
    if args.json:
        sys.stdout.write(json.dumps(json_report(run), ensure_ascii=False, indent=1) + "\n")
    else:
        sys.stdout.write(table(run) + "\n")
    return exit_status(run)


async def _run(args: argparse.Namespace, settings: Settings, tasks: list[Task], offline: bool) -> EvalRun:
    user_model: ModelClient | None = create_model(settings) if args.user_model else None
    try:
        if args.url:
            world = ServiceWorld(args.url, args.api_key, args.db)
            try:
                # One database, shared by every trial: compared trial by trial, one at a time.
                concurrency = 1 if args.db is not None else args.concurrency
                return await _run_in(
                    args, world, tasks, f"the service at {args.url}", False, concurrency, user_model
                )
            finally:
                await world.close()
        probe = create_model(settings)
        model_name = f"{probe.provider}:{probe.model_name}"
        await probe.close()
        with tempfile.TemporaryDirectory(prefix="msev15-eval-") as folder:
            local = InProcessWorld(settings, Path(folder))
            return await _run_in(args, local, tasks, model_name, offline, args.concurrency, user_model)
    finally:
        if user_model is not None:
            await user_model.close()


async def _run_in(
    args: argparse.Namespace,
    world: World,
    tasks: list[Task],
    model: str,
    offline: bool,
    concurrency: int,
    user_model: ModelClient | None,
) -> EvalRun:
    attempted = sum(1 for t in tasks if (t.offline or not offline) and world.cannot_run(t) is None)
    return await run_tasks(
        tasks,
        world,
        model=model,
        offline=offline,
        trials=args.trials,
        concurrency=concurrency,
        target=f"at {args.url}" if args.url else "in process",
        user_model=user_model,
        progress=ProgressBar(attempted * args.trials),
    )


def exit_status(run: EvalRun) -> int:
    """1 when a task the offline model claims to cover (tag `offline`) failed; else 0."""
    return 1 if any(r.attempted and r.task.offline and not r.passed for r in run.results) else 0
