"""Serve the service for a test: an ASGI app under real Hypercorn inside the test's event loop, or
the real service under Hypercorn in a subprocess (`hypercorn_service`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from msev15.eval.loopback import bound_socket, serve_on_loopback
from tests.helpers import eventually_sync

__all__ = ["bound_socket", "hypercorn_service", "serve_on_loopback"]

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def hypercorn_service(
    url: str,
    args: list[str],
    env: dict[str, str],
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
    path: str = "/health",
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m hypercorn ARGS app:app` from the repository, until `ready` holds for `GET url+path`
    (within 30 s; it fails at once if the process exits); stopped with SIGTERM, then SIGKILL."""
    process = subprocess.Popen(  # noqa: S603 - our own app, fixed arguments
        [sys.executable, "-m", "hypercorn", *args, "app:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    try:

        def answering() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the service did not start: it exited with {process.returncode}")
            try:
                return ready(httpx.get(f"{url}{path}", timeout=2))
            except httpx.TransportError:
                return False

        eventually_sync(answering, within=30, interval=0.1, what=f"the service answering {path}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
