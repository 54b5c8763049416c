"""The shared test helpers keep their rules: a missing binary fails in CI, polls are bounded."""

from __future__ import annotations

import socket
import sys

import pytest

from tests.helpers import eventually, eventually_sync, free_port, require_binary

MISSING = "msev15-no-such-binary"


def test_a_missing_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true") as failed:
        require_binary(MISSING, "some-package")
    message = str(failed.value)
    assert MISSING in message and "some-package" in message and "scripts/bootstrap --dev" in message


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_a_missing_binary_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_binary(f"/nonexistent/{MISSING}", "some-package")
    assert MISSING in str(skipped.value) and "scripts/bootstrap --dev" in str(skipped.value)


def test_a_present_binary_is_returned_by_name_and_by_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_binary(sys.executable, "python3") == sys.executable
    assert require_binary("sh", "dash").endswith("/sh")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_eventually_returns_the_first_truthy_value_and_accepts_async_checks() -> None:
    calls = []

    async def check() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) == 3 else None

    assert await eventually(check, interval=0) == [1, 1, 1]


async def test_eventually_retries_assertions_then_fails_with_what_it_waited_for() -> None:
    def never() -> bool:
        raise AssertionError("still 2 rows")

    with pytest.raises(AssertionError, match=r"the rows not reached within 0.05 s .*still 2 rows"):
        await eventually(never, within=0.05, what="the rows")


async def test_eventually_stops_at_once_on_other_errors() -> None:
    calls = []

    def dead() -> bool:
        calls.append(1)
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="died"):
        await eventually(dead, within=5)
    assert len(calls) == 1


def test_eventually_sync_is_bounded_too() -> None:
    with pytest.raises(AssertionError, match=r"the port not reached within 0.05 s .*last value: False"):
        eventually_sync(lambda: False, within=0.05, what="the port")
    assert eventually_sync(lambda: "up") == "up"
