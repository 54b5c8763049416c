"""Choosing the model: API.md's selection rules turned into one ModelClient."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx2
import openai

from msev15.agent.model import ModelClient
from msev15.agent.offline.model import OfflineModel
from msev15.agent.openai_chat import OpenAIChatModel, client_timeout
from msev15.agent.transport import lean_http_client
from msev15.settings import Settings


def create_model(settings: Settings) -> ModelClient:
    """The model API.md's selection rules choose."""
    provider = settings.model_provider
    if provider == "azure":
        if not settings.azure_openai_api_key:
            raise ValueError("LLM_PROVIDER=azure needs AZURE_OPENAI_API_KEY")
        endpoint = settings.azure_openai_endpoint or _origin(settings.azure_ai_project_endpoint)
        if not endpoint:
            raise ValueError("LLM_PROVIDER=azure needs AZURE_OPENAI_ENDPOINT or AZURE_AI_PROJECT_ENDPOINT")
        client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
            azure_endpoint=endpoint,
            api_key=settings.azure_openai_api_key.get_secret_value(),
            api_version=settings.azure_openai_api_version,
            azure_deployment=settings.azure_openai_responses_deployment_name,
            timeout=client_timeout(settings),
            max_retries=0,
            http_client=model_http_client(),
        )
        model = settings.azure_openai_responses_deployment_name
    elif provider == "openai":
        client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed",
            timeout=client_timeout(settings),
            max_retries=0,
            http_client=model_http_client(),
        )
        model = settings.openai_model
    else:
        return OfflineModel()
    return OpenAIChatModel(
        client,
        model,
        provider,
        max_retries=settings.model_max_retries,
        retry_base=settings.model_retry_base_seconds,
        temperature=settings.model_temperature,
    )


# The model connection pool. The cap bounds sockets at the most streams one worker is benchmarked
# for (bench/run.py: 1,000, all complete); a lower one would queue turns for a connection while the
# worker still has CPU to spare. Idle connections expire before the 5 s idle timeout of the
# uvicorn/Hypercorn servers many OpenAI-compatible models run on (vLLM, the test server), so a call
# rarely goes out on a connection the server is closing.
MODEL_CONNECTION_LIMITS = httpx2.Limits(
    max_connections=1000, max_keepalive_connections=100, keepalive_expiry=4.0
)


def model_http_client() -> httpx2.AsyncClient:
    """The HTTP client under the model client: the lean transport, kept by measurement (bench/README.md).

    bench/service_app.py swaps this function to compare transports.
    """
    return lean_http_client(limits=MODEL_CONNECTION_LIMITS)


def _origin(url: str | None) -> str | None:
    """The resource origin of an Azure AI project endpoint (…/api/projects/NAME)."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
