"""Small helpers every test module shares: a free port, bounded polls, and required binaries."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast, overload

import pytest

T = TypeVar("T")

BOOTSTRAP = "scripts/bootstrap --dev"


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on right now (for a subprocess to bind, or to stay 'down')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Bounded polls --------------------------------------------------------------------------------


def _gave_up(what: str, within: float, tries: int, last: object, error: AssertionError | None) -> NoReturn:
    subject = what or "the condition"
    seen = f"last assertion: {error}" if error is not None else f"last value: {last!r}"
    raise AssertionError(f"{subject} not reached within {within:g} s ({tries} tries; {seen})") from error


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = ..., interval: float = ..., what: str = ...
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T], *, within: float = ..., interval: float = ..., what: str = ...
) -> T: ...
async def eventually(
    check: Callable[[], Awaitable[T] | T], *, within: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """Call `check` (sync or async) until it returns a truthy value or stops raising AssertionError.

    Returns that value. After `within` seconds it fails with an AssertionError naming `what`.
    Any other exception ends the poll at once (e.g. "the process died"): that is not worth waiting on.
    """
    deadline = time.monotonic() + within
    tries = 0
    while True:
        tries += 1
        error: AssertionError | None = None
        value: Any = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            error = exc
        else:
            if value:
                return cast(T, value)
        if time.monotonic() >= deadline:
            _gave_up(what, within, tries, value, error)
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T], *, within: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """`eventually` for code outside the event loop (starting subprocesses in sync fixtures)."""
    deadline = time.monotonic() + within
    tries = 0
    while True:
        tries += 1
        error: AssertionError | None = None
        value: Any = None
        try:
            value = check()
        except AssertionError as exc:
            error = exc
        else:
            if value:
                return cast(T, value)
        if time.monotonic() >= deadline:
            _gave_up(what, within, tries, value, error)
        time.sleep(interval)


# Binaries the tests drive ----------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_binary(path_or_name: str | Path, package: str) -> str:
    """The binary's path; when it is missing, fail in CI (CI=true) and skip everywhere else.

    A name is looked up on PATH, a path must exist and be executable. `package` is the Debian package
    that provides it, named in the message so the fix is obvious.
    """
    wanted = str(path_or_name)
    found = shutil.which(wanted)
    if found is not None:
        return found
    reason = f"{wanted} is not installed (Debian package {package!r}; {BOOTSTRAP} installs it)"
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
