"""Probes: readiness is cached for HEALTH_CACHE_SECONDS, and says `draining` once shutdown begins."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quart import Quart

from msev15 import create_app
from msev15.web.services import EXTENSION_KEY, Services
from tests.conftest import make_settings


def count_checks(app: Quart) -> list[str]:
    """Every check run from now on appends its name (the checks themselves still run)."""
    found: Services = app.extensions[EXTENSION_KEY]
    runs: list[str] = []
    for check in found.checks:

        async def counted(run=check.run, name=check.name) -> str:  # type: ignore[no-untyped-def]
            runs.append(name)
            await asyncio.sleep(0.05)  # long enough for concurrent probes to overlap
            return str(await run())

        check.run = counted
    return runs


async def test_readiness_is_checked_once_per_cache_period(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, health_cache_seconds=30))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        runs = count_checks(app)
        answers = await asyncio.gather(*(client.get("/health/readiness") for _ in range(10)))
        answers.append(await client.get("/health/readiness"))
        assert {a.status_code for a in answers} == {200}
        bodies = [await a.get_json() for a in answers]
        assert all(b["checks"] == bodies[0]["checks"] for b in bodies)
        assert sorted(runs) == sorted(c.name for c in app.extensions[EXTENSION_KEY].checks)  # one round


async def test_readiness_checks_again_when_the_cache_expires(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, health_cache_seconds=0.2))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        runs = count_checks(app)
        rounds = len(app.extensions[EXTENSION_KEY].checks)
        await client.get("/health/readiness")
        await client.get("/health/readiness")
        assert len(runs) == rounds
        await asyncio.sleep(0.3)
        await client.get("/health/readiness")
        assert len(runs) == 2 * rounds


async def test_without_a_cache_every_probe_checks(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, health_cache_seconds=0))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        runs = count_checks(app)
        for _ in range(3):
            await client.get("/health/readiness")
        assert len(runs) == 3 * len(app.extensions[EXTENSION_KEY].checks)


async def test_readiness_drains_as_soon_as_shutdown_begins_while_liveness_stays_up(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, health_cache_seconds=30))
    test_app = app.test_app()
    await test_app.startup()
    client = test_app.test_client()
    assert (await client.get("/health/readiness")).status_code == 200  # cached as healthy
    found: Services = app.extensions[EXTENSION_KEY]
    closing, release = asyncio.Event(), asyncio.Event()

    async def slow_part() -> None:  # a part that takes its time to close, like a turn finishing
        closing.set()
        await release.wait()

    found.stack.push_async_callback(slow_part)
    shutdown = asyncio.create_task(test_app.shutdown())
    try:
        await asyncio.wait_for(closing.wait(), timeout=10)
        ready = await client.get("/health/readiness")
        body = await ready.get_json()
        assert ready.status_code == 503 and body["status"] == "draining"  # the cache does not hide it
        for path in ("/health", "/health/liveness"):
            live = await client.get(path)
            assert live.status_code == 200 and (await live.get_json())["status"] == "healthy"
    finally:
        release.set()
        await asyncio.wait_for(shutdown, timeout=10)
