"""Choosing the model: API.md's selection rules turned into one ModelClient, and its credential."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx2
import openai

from msev15.agent.model import ModelClient
from msev15.agent.offline.model import OfflineModel
from msev15.agent.openai_chat import OpenAIChatModel
from msev15.agent.openai_responses import OpenAIResponsesModel
from msev15.agent.openai_stream import (
    ModelAuth,
    ModelAuthError,
    OpenAIStreamModel,
    StaticAuth,
    client_timeout,
)
from msev15.agent.transport import lean_http_client
from msev15.settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger(__name__)

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
CREDENTIAL_FIX = "run az login or set AZURE_OPENAI_API_KEY"
START_CHECK_SECONDS = 10.0  # the first token at start: `az` or the managed-identity endpoint may be slow
READY_CHECK_SECONDS = 1.5  # readiness answers within 2 s; a cached token takes microseconds


def create_model(settings: Settings, *, credential: AsyncTokenCredential | None = None) -> ModelClient:
    """The model API.md's selection rules choose; `credential` replaces DefaultAzureCredential (tests)."""
    provider = settings.model_provider
    http = model_http_client()
    if provider == "azure":
        client, auth = _azure_client(settings, credential, http)
        model = settings.azure_openai_responses_deployment_name
    elif provider == "openai":
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=key or "not-needed",
            timeout=client_timeout(settings),
            max_retries=0,
            http_client=http,
        )
        auth = StaticAuth("api key (OPENAI_API_KEY)" if key else "none")
        model = settings.openai_model
    else:
        return OfflineModel()  # the unused HTTP client holds no connection yet
    kind = OpenAIResponsesModel if settings.model_api == "responses" else OpenAIChatModel
    return kind(
        client,
        model,
        provider,
        max_retries=settings.model_max_retries,
        retry_base=settings.model_retry_base_seconds,
        temperature=settings.model_temperature,
        auth=auth,
        http=http,
    )


def _azure_client(
    settings: Settings, credential: AsyncTokenCredential | None, http: httpx2.AsyncClient
) -> tuple[openai.AsyncOpenAI, ModelAuth]:
    """Azure OpenAI with AZURE_OPENAI_API_KEY, else keyless through Microsoft Entra ID.

    A dated OPENAI_API_VERSION goes through `AsyncAzureOpenAI` (`/openai/deployments/NAME/chat/completions`
    and `/openai/responses`, each with `?api-version=`); `v1` is Azure's versionless API
    (`/openai/v1/...`, the deployment named in the body), spoken by the plain client.
    """
    endpoint = settings.azure_openai_endpoint or _origin(settings.azure_ai_project_endpoint)
    if not endpoint:
        raise ValueError("LLM_PROVIDER=azure needs AZURE_OPENAI_ENDPOINT or AZURE_AI_PROJECT_ENDPOINT")
    key = settings.azure_openai_api_key.get_secret_value() if settings.azure_openai_api_key else None
    auth: ModelAuth
    secret: dict[str, Any]  # how the client signs its requests
    if key:
        auth, secret = StaticAuth("api key (AZURE_OPENAI_API_KEY)"), {"api_key": key}
    else:
        entra = EntraIdAuth(credential if credential is not None else azure_credential())
        auth, secret = entra, {"azure_ad_token_provider": entra.token}
    common: dict[str, Any] = {
        "timeout": client_timeout(settings),
        "max_retries": 0,
        "http_client": http,
    }
    version = settings.azure_api_version
    if version == "v1":  # the plain client takes the token provider as its api_key
        base_url = f"{endpoint.rstrip('/')}/openai/v1"
        return openai.AsyncOpenAI(
            base_url=base_url, api_key=key or secret["azure_ad_token_provider"], **common
        ), auth
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=endpoint,
        api_version=version,
        azure_deployment=settings.azure_openai_responses_deployment_name,
        **secret,
        **common,
    )
    return client, auth


def azure_credential() -> AsyncTokenCredential:
    """Keyless sign-in: environment (service principal), workload identity, managed identity, `az login`…"""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


class EntraIdAuth:
    """Microsoft Entra ID tokens for Azure OpenAI, from an azure-identity credential.

    `token` is the openai client's `azure_ad_token_provider`, called for every request. Underneath,
    azure-identity's bearer-token provider keeps the token and fetches a new one only when it is
    within five minutes of expiry (less up to a minute of jitter, or at the credential's own
    `refresh_on`): a long stream never starts with a token about to lapse, and a burst of requests
    shares one fetch (the provider holds a lock while it refreshes).
    """

    description = "Microsoft Entra ID (keyless, DefaultAzureCredential)"

    def __init__(self, credential: AsyncTokenCredential) -> None:
        from azure.identity.aio import get_bearer_token_provider

        self.credential = credential
        self._provider = get_bearer_token_provider(credential, AZURE_SCOPE)
        self.status = "not checked yet"

    async def token(self) -> str:
        try:
            token = await self._provider()
        except Exception as exc:  # whatever the credential raised, said plainly
            self.status = credential_problem(exc, self.credential)
            raise ModelAuthError(self.status) from None
        self.status = "ok"
        return token

    async def check(self, limit: float = READY_CHECK_SECONDS) -> str:
        try:
            async with asyncio.timeout(limit):
                await self.token()
        except ModelAuthError as exc:
            return exc.reason
        except TimeoutError:
            self.status = (
                f"the Azure credential gave no token within {limit:g} s "
                f"(managed identity endpoint or az slow to answer); {CREDENTIAL_FIX}"
            )
        return self.status

    async def close(self) -> None:
        await self.credential.close()


def credential_problem(exc: BaseException, credential: object = None) -> str:
    """What went wrong with the Azure credential, in words an operator can act on."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError

    if isinstance(exc, CredentialUnavailableError):
        return f"no Azure credential available ({_first_line(exc.message)}); {CREDENTIAL_FIX}"
    if isinstance(exc, ClientAuthenticationError):
        message = str(exc.message or exc)
        attempts = re.findall(r"^\t(\w+): (.*)$", message, flags=re.MULTILINE)
        if attempts:
            chain = len(getattr(credential, "credentials", ()) or ())
            if not chain or len(attempts) >= chain:  # every credential had nothing to offer
                return (
                    "no Azure identity found (no managed identity, workload identity, service principal "
                    f"in the environment, or az login); {CREDENTIAL_FIX}"
                )
            name, reason = attempts[-1]  # the chain stops at the first credential that really failed
            return f"Microsoft Entra ID refused {name}: {_first_line(reason)}"
        return f"Microsoft Entra ID refused the credential: {_first_line(message)}"
    return f"the Azure credential failed ({type(exc).__name__}: {_first_line(str(exc))}); {CREDENTIAL_FIX}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:200]


async def check_credential(model: ModelClient) -> None:
    """At start: fetch a first token for a keyless model, so the banner can say whether it works."""
    auth = getattr(model, "auth", None)
    if isinstance(auth, EntraIdAuth):
        status = await auth.check(START_CHECK_SECONDS)
        if status != "ok":
            log.warning("the model credential does not work: %s", status)


def model_auth(model: ModelClient) -> str:
    """The banner's line on model authentication: which kind, and a credential failure if there is one."""
    if isinstance(model, OfflineModel):
        return "none (offline)"
    auth = getattr(model, "auth", None)
    if not isinstance(model, OpenAIStreamModel) or auth is None:
        return "the model's own"
    status = getattr(auth, "status", "ok")
    return auth.description if status == "ok" else f"{auth.description}: {status}"


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
