"""The report of a run: pass^1 and pass^k (τ-bench's estimator), violations, and what a trial costs."""

from __future__ import annotations

import statistics
from collections import Counter
from math import comb
from typing import Any

from msev15.eval.run import EvalRun, TaskResult, TrialResult


def pass_hat_k(results: list[TaskResult], k: int) -> float | None:
    """τ-bench's unbiased pass^k: the mean over tasks of C(c, k) / C(n, k) (n trials, c passed).

    The chance that k trials of a task, drawn from its n, all pass; None when nothing ran k times.
    """
    ran = [r for r in results if r.attempted and len(r.trials) >= k]
    if not ran:
        return None
    return sum(comb(r.successes, k) / comb(len(r.trials), k) for r in ran) / len(ran)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(run: EvalRun) -> dict[str, Any]:
    """The figures of the terminal table (and of the JSON and HTML reports)."""
    trials = [t for r in run.results for t in r.trials]
    latencies = [turn.seconds for t in trials for turn in t.turns]
    tokens = [t.tokens for t in trials if t.tokens is not None]
    violations = Counter(kind for t in trials for kind, _ in t.verdict.violations)
    attempted = [r for r in run.results if r.attempted]
    return {
        "tasks": len(run.results),
        "attempted": len(attempted),
        "not_attempted": {r.task.id: r.not_attempted for r in run.results if r.not_attempted is not None},
        "tasks_passed": sum(1 for r in attempted if r.passed),
        "trials_run": len(trials),
        "trials_passed": sum(1 for t in trials if t.passed),
        "pass^1": pass_hat_k(run.results, 1),
        "pass^k": pass_hat_k(run.results, run.trials),
        "pass^k_curve": {str(k): pass_hat_k(run.results, k) for k in range(1, run.trials + 1)},
        "violations": dict(sorted(violations.items())),
        "avg_turns": statistics.fmean(len(t.turns) for t in trials) if trials else None,
        "avg_tool_calls": statistics.fmean(t.tool_calls for t in trials) if trials else None,
        "avg_tokens": statistics.fmean(tokens) if tokens else None,
        "latency_p50_s": _percentile(latencies, 0.50),
        "latency_p95_s": _percentile(latencies, 0.95),
        "seconds": round(run.seconds, 2),
    }


def trial_dict(trial: TrialResult) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "passed": trial.passed,
        "failures": trial.verdict.failures,
        "violations": [{"kind": k, "detail": d} for k, d in trial.verdict.violations],
        "unchecked": trial.verdict.unchecked,
        "turns": len(trial.turns),
        "tool_calls": trial.tool_calls,
        "tokens": trial.tokens,
        "seconds": round(trial.seconds, 3),
        "transcript": [turn.public() for turn in trial.turns],
    }


def json_report(run: EvalRun) -> dict[str, Any]:
    """API.md's machine report: model, trials, pass^1, pass^k and every task with its trials."""
    figures = summary(run)
    return {
        "model": run.model,
        "trials": run.trials,
        "pass^1": figures["pass^1"],
        "pass^k": figures["pass^k"],
        "target": run.target,
        "user_model": run.user_model,
        "summary": figures,
        "tasks": [
            {
                "id": r.task.id,
                "title": r.task.title,
                "tags": r.task.tags,
                "attempted": r.attempted,
                "not_attempted": r.not_attempted,
                "passed": r.passed,
                "trials": [trial_dict(t) for t in r.trials],
            }
            for r in run.results
        ],
    }


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def table(run: EvalRun) -> str:
    """The terminal table: the figures, violations by kind, failing and not attempted tasks."""
    f = summary(run)
    rows = [
        ("model", run.model),
        ("target", run.target + (", simulated customer" if run.user_model else ", scripted turns")),
        ("tasks", f"{f['attempted']} attempted of {f['tasks']} ({f['tasks_passed']} passed every trial)"),
        ("trials per task", str(run.trials)),
        ("trials passed", f"{f['trials_passed']} of {f['trials_run']}"),
        ("pass^1", _ratio(f["pass^1"])),
        (f"pass^k (k={run.trials})", _ratio(f["pass^k"])),
        ("rule violations", str(sum(f["violations"].values()))),
        *((f"  {kind}", str(count)) for kind, count in f["violations"].items()),
        ("avg turns / trial", _number(f["avg_turns"])),
        ("avg tool calls / trial", _number(f["avg_tool_calls"])),
        ("avg tokens / trial (est.)", _number(f["avg_tokens"], digits=0)),
        ("turn latency p50", _number(f["latency_p50_s"] and f["latency_p50_s"] * 1000, " ms")),
        ("turn latency p95", _number(f["latency_p95_s"] and f["latency_p95_s"] * 1000, " ms")),
        ("wall time", f"{f['seconds']:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    failing = [r for r in run.results if r.attempted and not r.passed]
    if failing:
        lines.append("")
        lines.append(f"failing tasks ({len(failing)}):")
        for result in failing:
            first = next(t for t in result.trials if not t.passed)
            reasons = first.verdict.failures + [f"[{k}] {d}" for k, d in first.verdict.violations]
            lines.append(f"  {result.task.id} ({result.successes}/{len(result.trials)}): {reasons[0]}")
    if f["not_attempted"]:
        lines.append("")
        lines.append(f"not attempted ({len(f['not_attempted'])}):")
        by_reason: dict[str, list[str]] = {}
        for task_id, reason in f["not_attempted"].items():
            by_reason.setdefault(reason, []).append(task_id)
        for reason, ids in by_reason.items():
            lines.append(f"  {reason}: {', '.join(ids)}")
    return "\n".join(lines)
