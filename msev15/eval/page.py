"""The HTML report: one self-contained page (no script, no external file) with the figures, a pass^k
chart drawn as inline SVG, every task's result, and the transcript of each failing trial."""

from __future__ import annotations

from html import escape
from typing import Any

from msev15.eval.report import summary
from msev15.eval.run import EvalRun, TaskResult, TrialResult

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.pass{color:#116329}.fail{color:#a40e26}.skip{color:#6e7781}
details{margin:.6rem 0;border:1px solid #d0d7de;border-radius:6px;padding:.4rem .8rem}summary{cursor:pointer}
.turn{margin:.4rem 0}.who{font-weight:600}.answer{white-space:pre-wrap}.calls{color:#57606a;font-size:.9em}
ul.problems{color:#a40e26}
"""


def html_report(run: EvalRun) -> str:
    figures = summary(run)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Evaluation of {escape(run.model)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Evaluation of <code>{escape(run.model)}</code></h1>",
        _figures(run, figures),
        "<h2>pass^k</h2>",
        chart(figures["pass^k_curve"]),
        "<h2>Tasks</h2>",
        _tasks(run.results),
        "<h2>Failing trials</h2>",
        _failures(run.results),
        "</body></html>",
    ]
    return "\n".join(parts)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figures(run: EvalRun, f: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1000:.1f} ms"

    rows = [
        ("target", f"{run.target}, {'simulated customer' if run.user_model else 'scripted turns'}"),
        ("tasks attempted", f"{f['attempted']} of {f['tasks']} ({f['tasks_passed']} passed every trial)"),
        ("trials per task", str(run.trials)),
        ("trials passed", f"{f['trials_passed']} of {f['trials_run']}"),
        ("pass^1", _ratio(f["pass^1"])),
        (f"pass^k (k={run.trials})", _ratio(f["pass^k"])),
        ("rule violations", ", ".join(f"{k}: {n}" for k, n in f["violations"].items()) or "none"),
        ("avg turns / tool calls / tokens (est.)", _averages(f)),
        ("turn latency p50 / p95", f"{ms(f['latency_p50_s'])} / {ms(f['latency_p95_s'])}"),
        ("not attempted", ", ".join(f"{k} ({v})" for k, v in f["not_attempted"].items()) or "none"),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='figures'>{body}</table>"


def _averages(f: dict[str, Any]) -> str:
    values = [f["avg_turns"], f["avg_tool_calls"], f["avg_tokens"]]
    return " / ".join("n/a" if v is None else f"{v:.1f}" for v in values)


def chart(curve: dict[str, float | None], width: int = 480, height: int = 220) -> str:
    """pass^k for k = 1..K as bars, in inline SVG (it falls as k grows: the point of τ-bench)."""
    points = [(int(k), v) for k, v in curve.items() if v is not None]
    if not points:
        return "<p>No trials ran.</p>"
    left, bottom, top = 40, 30, 24  # room above a full bar for its value
    plot_h = height - bottom - top
    step = (width - left - 10) / len(points)
    bars = []
    for index, (k, value) in enumerate(points):
        h = value * plot_h
        x = left + index * step + step * 0.15
        y = top + plot_h - h
        middle = x + step * 0.35
        bars.append(
            f"<rect class='bar' x='{x:.1f}' y='{y:.1f}' width='{step * 0.7:.1f}' height='{h:.1f}'"
            f" fill='#0969da'><title>pass^{k} = {value:.3f}</title></rect>"
            f"<text x='{middle:.1f}' y='{height - 10}' text-anchor='middle'>k={k}</text>"
            f"<text x='{middle:.1f}' y='{y - 6:.1f}' text-anchor='middle'>{value:.2f}</text>"
        )
    axis = (
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + plot_h}' stroke='#57606a'/>"
        f"<line x1='{left}' y1='{top + plot_h}' x2='{width - 5}' y2='{top + plot_h}' stroke='#57606a'/>"
        f"<text x='{left - 6}' y='{top + 10}' text-anchor='end'>1</text>"
        f"<text x='{left - 6}' y='{top + plot_h}' text-anchor='end'>0</text>"
    )
    return (
        f"<svg role='img' aria-label='pass^k by k' width='{width}' height='{height}'"
        f" viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg' font-size='12'>"
        f"{axis}{''.join(bars)}</svg>"
    )


def _tasks(results: list[TaskResult]) -> str:
    rows = []
    for r in results:
        if not r.attempted:
            state, css = f"not attempted: {r.not_attempted}", "skip"
        else:
            state, css = f"{r.successes}/{len(r.trials)} passed", "pass" if r.passed else "fail"
        kinds = sorted({k for t in r.trials for k, _ in t.verdict.violations})
        rows.append(
            f"<tr class='task {css}' data-task='{escape(r.task.id)}'><td>{escape(r.task.id)}</td>"
            f"<td>{escape(r.task.title)}</td><td>{escape(', '.join(r.task.tags))}</td>"
            f"<td class='{css}'>{escape(state)}</td><td>{escape(', '.join(kinds))}</td></tr>"
        )
    head = "<tr><th>task</th><th>title</th><th>tags</th><th>result</th><th>violations</th></tr>"
    return f"<table class='tasks'>{head}{''.join(rows)}</table>"


def _failures(results: list[TaskResult]) -> str:
    failing = [(r, t) for r in results for t in r.trials if not t.passed]
    if not failing:
        return "<p>None: every trial passed.</p>"
    return "".join(_transcript(r, t) for r, t in failing)


def _transcript(result: TaskResult, trial: TrialResult) -> str:
    problems = trial.verdict.failures + [f"[{k}] {d}" for k, d in trial.verdict.violations]
    items = "".join(f"<li>{escape(p)}</li>" for p in problems)
    turns = []
    for turn in trial.turns:
        calls = [f"{n}({'ok' if ok else 'failed'})" for n, _, ok in turn.calls]
        calls += [f"{n}(refused: {reason})" for n, reason in turn.refused]
        calls += [f"{n}(awaiting approval)" for n, _ in turn.approvals]
        turns.append(
            "<div class='turn'>"
            f"<div><span class='who'>customer:</span> {escape(turn.customer)}</div>"
            + (f"<div class='calls'>tools: {escape(', '.join(calls))}</div>" if calls else "")
            + f"<div><span class='who'>agent:</span> <span class='answer'>{escape(turn.answer)}</span></div>"
            + (f"<div class='fail'>error: {escape(turn.error)}</div>" if turn.error else "")
            + "</div>"
        )
    return (
        f"<details class='failure' data-task='{escape(result.task.id)}'><summary>{escape(result.task.id)}"
        f" — trial {trial.number}</summary><p>{escape(result.task.goal)}</p><ul class='problems'>{items}</ul>"
        f"{''.join(turns)}</details>"
    )
