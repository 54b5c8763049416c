"""The HTTP transports the model client can run on, by name, for the benchmark's A/B comparison.

Only the benchmark reads these names (`BENCH_MODEL_TRANSPORT` for bench/service_app.py, the
`--transports` of bench/client_cpu.py): the service itself has one transport and no setting.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import openai

from msev15.agent import providers


def _lean() -> httpx2.AsyncClient:
    from msev15.agent.transport import lean_http_client

    client: httpx2.AsyncClient = lean_http_client()
    return client


def _aiohttp() -> httpx2.AsyncClient:
    return openai.DefaultAioHttpClient(
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=5.0)
    )


def _httpx() -> httpx2.AsyncClient:
    return openai.DefaultAsyncHttpxClient()


TRANSPORTS: dict[str, Callable[[], httpx2.AsyncClient]] = {
    "service": providers.model_http_client,  # whatever the service ships with
    "lean": _lean,
    "aiohttp": _aiohttp,
    "httpx": _httpx,
}


def use(name: str) -> None:
    """Make the service's `create_model` build its HTTP client with the transport `name`."""
    providers.model_http_client = TRANSPORTS[name]
