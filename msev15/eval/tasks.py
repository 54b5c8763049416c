"""Evaluation tasks as data: what a customer wants, what they type, and what must (not) happen.

Tasks live in YAML or JSON files (one task, or a list of them, per file) and are validated here,
so a typo in a shop's own task is an error naming the file, the task and the field, not a task
that silently checks nothing.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from msev15.settings import ROOT

TASKS_DIR = ROOT / "evals" / "tasks"
OFFLINE = "offline"  # the built-in offline model is known to pass the task
LLM_ONLY = "llm-only"  # the offline model cannot do it: listed as not attempted when it runs
ORDER_FIELDS = (
    "status",
    "customer_email",
    "customer_name",
    "shipping_address",
    "cancel_reason",
    "return_reason",
    "total",
    "items",
)


class _Loader(yaml.SafeLoader):
    """YAML as 1.2 reads booleans: only true and false, so a typed `say: yes` stays the word "yes"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class TaskFileError(ValueError):
    """A task file that cannot be read or does not match the format; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Customer(_Strict):
    """Who is typing. `verified`: the shop has verified the email (the chat runs under a client token)."""

    name: str | None = None
    email: str | None = None
    verified: bool = False

    @model_validator(mode="after")
    def _verified_needs_email(self) -> Customer:
        if self.verified and not self.email:
            raise ValueError("a verified customer needs an email")
        return self


class ProductEdit(_Strict):
    """A change to one product of the trial's fresh database before the trial starts."""

    description: str | None = None
    stock: int | None = Field(None, ge=0)


class Setup(_Strict):
    """The trial's world: whether the catalog (MCP) server is connected, and product edits it serves."""

    catalog: bool = True
    products: dict[str, ProductEdit] = Field(default_factory=dict)


Call = tuple[str, dict[str, Any], bool]


class Trace(_Strict):
    """What the offline model does at one turn, in order; checked only when the offline model runs.

    Other models may reach the goal another way, so for them only the outcome counts.
    """

    calls: list[Call] = Field(default_factory=list)
    refused: list[tuple[str, str]] = Field(default_factory=list)
    approvals: list[tuple[str, dict[str, Any]]] = Field(default_factory=list)
    says: list[str] = Field(default_factory=list)
    never_says: list[str] = Field(default_factory=list)


class Turn(_Strict):
    """One scripted customer message (typed confirmations such as "yes" included)."""

    say: Annotated[str, Field(min_length=1, max_length=4000)]
    trace: Trace | None = None


class OrderFacts(_Strict):
    """Fields an order must have after the trial (a subset; `total` like "$29.99", items as [sku, qty])."""

    status: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    shipping_address: str | None = None
    cancel_reason: str | None = None
    return_reason: str | None = None
    total: str | None = None
    items: list[tuple[str, int]] | None = None

    def wanted(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Mail(_Strict):
    """A mail the outbox must hold: its recipient, and words of its subject."""

    to: str
    subject: str = ""


class Forbidden(_Strict):
    """An action that must not happen: a tool that ran (its arguments a subset), or words said."""

    kind: str = Field("forbidden_action", pattern=r"^[a-z_]{1,40}$")
    tool: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    says: str | None = None

    @model_validator(mode="after")
    def _one_thing(self) -> Forbidden:
        if (self.tool is None) == (self.says is None):
            raise ValueError("name exactly one of `tool` or `says`")
        return self


class Task(_Strict):
    """One evaluation task (τ-bench style): a goal, scripted turns, and the expected outcome.

    `orders` is a state comparison: after the trial every order must be as the demo data had it,
    except those listed here (the fields they must have, or null for an order that must not exist).
    `mails` is the whole outbox. `facts` are words the answers must contain (case ignored; a list
    gives alternatives, any of which will do). `uses` names tools that must have run successfully.
    """

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,79}$")]
    title: str
    goal: Annotated[str, Field(min_length=1)]
    customer: Customer = Customer()
    tags: list[str] = Field(default_factory=list)
    source: str | None = None
    setup: Setup = Setup()
    transport: Literal["stream", "json"] = "stream"
    turns: Annotated[list[Turn], Field(min_length=1, max_length=40)]
    orders: dict[str, OrderFacts | None] = Field(default_factory=dict)
    mails: list[Mail] = Field(default_factory=list)
    facts: list[str | list[str]] = Field(default_factory=list)
    uses: list[str] = Field(default_factory=list)
    must_not: list[Forbidden] = Field(default_factory=list)
    file: str = ""

    @model_validator(mode="after")
    def _offline_or_not(self) -> Task:
        if (OFFLINE in self.tags) == (LLM_ONLY in self.tags):
            raise ValueError(f"tag the task either {OFFLINE!r} or {LLM_ONLY!r}")
        if LLM_ONLY in self.tags and any(t.trace for t in self.turns):
            raise ValueError(f"an {LLM_ONLY!r} task has no offline trace")
        return self

    @property
    def offline(self) -> bool:
        return OFFLINE in self.tags


def load_file(path: Path) -> list[Task]:
    """The tasks of one file, each checked; errors name the file, the task and the field."""
    try:
        text = path.read_text("utf-8")
        raw: Any = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise TaskFileError(f"{path}: cannot read it: {exc}") from None
    items = raw if isinstance(raw, list) else [raw]
    tasks = []
    for number, item in enumerate(items, 1):
        name = item.get("id", f"#{number}") if isinstance(item, dict) else f"#{number}"
        if not isinstance(item, dict):
            raise TaskFileError(f"{path}: task {name} is not a mapping")
        try:
            tasks.append(Task.model_validate({**item, "file": path.name}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'task'}: {err['msg']}" for err in exc.errors()
            )
            raise TaskFileError(f"{path}: task {name}: {problems}") from None
    return tasks


def load_tasks(folder: Path = TASKS_DIR, patterns: Sequence[str] = ()) -> list[Task]:
    """Every task of the folder's *.yaml, *.yml and *.json files (ids unique), filtered by glob.

    A pattern matches a task's id or its file's name (`cancel-*`, `adversarial.yaml`).
    """
    if not folder.is_dir():
        raise TaskFileError(f"{folder}: no such folder of tasks")
    tasks: list[Task] = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
            tasks.extend(load_file(path))
    seen: dict[str, str] = {}
    for task in tasks:
        if task.id in seen:
            raise TaskFileError(f"task id {task.id!r} is used twice ({seen[task.id]} and {task.file})")
        seen[task.id] = task.file
    chosen = [t for t in tasks if _selected(t, patterns)]
    if patterns and not chosen:
        raise TaskFileError(f"no task matches {', '.join(patterns)}")
    return chosen


def _selected(task: Task, patterns: Iterable[str]) -> bool:
    patterns = list(patterns)
    return not patterns or any(fnmatch.fnmatch(task.id, p) or fnmatch.fnmatch(task.file, p) for p in patterns)
