"""The HTTP transports the model client can run on, by name, for the benchmark's A/B comparison.

Only the benchmark reads these names (`BENCH_MODEL_TRANSPORT` for bench/service_app.py, the
`--transports` of bench/client_cpu.py, `--model-transports` of bench/run.py): the service itself
has one transport and no setting. `aiohttp` needs `pip install "openai[aiohttp]"` (not pinned:
the service does not use it).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import openai

from msev15.agent import providers


def _aiohttp() -> httpx2.AsyncClient:
    """The openai SDK's aiohttp backend, with the service's cap and idle expiry."""
    return openai.DefaultAioHttpClient(limits=providers.MODEL_CONNECTION_LIMITS)


def _httpx() -> httpx2.AsyncClient:
    """The openai SDK's default: httpx's generic transport."""
    return openai.DefaultAsyncHttpxClient(limits=providers.MODEL_CONNECTION_LIMITS)


TRANSPORTS: dict[str, Callable[[], httpx2.AsyncClient]] = {
    "lean": providers.model_http_client,  # what the service ships with
    "aiohttp": _aiohttp,
    "httpx": _httpx,
}


def use(name: str) -> None:
    """Make the service's `create_model` build its HTTP client with the transport `name`."""
    providers.model_http_client = TRANSPORTS[name]
