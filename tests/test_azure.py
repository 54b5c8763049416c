"""Azure OpenAI as Azure users run it, end to end against the scripted server on 127.0.0.1.

The server stands in for the Azure endpoint (`AZURE_OPENAI_ENDPOINT=http://127.0.0.1:PORT`) and
answers the paths the openai client calls there: the dated API with `?api-version=`
(`/openai/deployments/NAME/chat/completions`, `/openai/responses`) and the versionless
`/openai/v1/...`. Keyless sign-in uses a credential double in place of DefaultAzureCredential:
it issues numbered tokens that expire, counts every fetch, and tells the server which bearer
tokens are valid, so the server turns away a missing, unknown or expired one with 401.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.policies import _authentication
from azure.identity import CredentialUnavailableError
from azure.identity.aio import ChainedTokenCredential, EnvironmentCredential

from msev15 import create_app
from msev15.agent import providers
from msev15.agent.model import ModelUnavailable, TextDelta, ToolCallRequest
from msev15.agent.openai_chat import OpenAIChatModel
from msev15.agent.openai_responses import OpenAIResponsesModel
from msev15.agent.openai_stream import OpenAIStreamModel
from msev15.agent.providers import AZURE_SCOPE, EntraIdAuth, create_model, credential_problem
from msev15.settings import DEFAULT_AZURE_API_VERSION, Settings, load_settings
from tests.conftest import make_settings
from tests.openai_server import Reply, ScriptedOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]
NO_IDENTITY = (
    "no Azure identity found (no managed identity, workload identity, service principal in the "
    "environment, or az login); run az login or set AZURE_OPENAI_API_KEY"
)


class TokenDouble:
    """An azure-identity async credential that issues numbered tokens living `lifetime` seconds."""

    def __init__(
        self, lifetime: float = 3600.0, clock: Callable[[], float] = time.time, fail: Exception | None = None
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.fail = fail
        self.issued: list[AccessToken] = []
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.fail is not None:
            raise self.fail
        token = AccessToken(f"entra-token-{len(self.issued) + 1}", int(self.clock() + self.lifetime))
        self.issued.append(token)
        return token

    @property
    def refreshes(self) -> int:
        return len(self.issued)

    def valid(self, headers: dict[str, str]) -> bool:
        """The server's check: a bearer token this credential issued and that has not expired."""
        now = self.clock()
        bearer = headers.get("authorization", "")
        return any(bearer == f"Bearer {t.token}" and t.expires_on > now for t in self.issued)

    async def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


AzureSettings = Callable[..., Settings]


@pytest.fixture
def azure(tmp_path: Path, openai_server: ScriptedOpenAI) -> AzureSettings:
    """`(**overrides) -> Settings` for Azure OpenAI at the scripted server, with no key unless given."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "llm_provider": "auto",
            "azure_openai_endpoint": openai_server.origin,
            "azure_openai_responses_deployment_name": "shop-gpt",
            "model_timeout_seconds": 2.0,
            "model_max_retries": 0,
        }
        return make_settings(tmp_path, **{**base, **overrides})

    return make


async def text_of(model: Any, messages: list[dict[str, Any]] = MESSAGES) -> str:
    return "".join([e.text async for e in model.stream(messages, []) if isinstance(e, TextDelta)])


def stream_model(model: object) -> OpenAIStreamModel:
    assert isinstance(model, OpenAIStreamModel)
    return model


# API key -------------------------------------------------------------------------------------


async def test_key_chat_goes_to_the_deployment_with_the_ga_version(
    azure: AzureSettings, openai_server: ScriptedOpenAI
) -> None:
    settings = azure(azure_openai_api_key="azure-secret")
    assert settings.model_provider == "azure" and settings.azure_api_version == DEFAULT_AZURE_API_VERSION
    model = stream_model(create_model(settings))
    assert isinstance(model, OpenAIChatModel) and model.provider == "azure"
    assert model.auth.description == "api key (AZURE_OPENAI_API_KEY)"
    openai_server.push(Reply.say("from azure"))
    assert await text_of(model) == "from azure"
    [sent] = openai_server.requests
    assert sent["_path"] == "/openai/deployments/shop-gpt/chat/completions"
    assert sent["_query"] == {"api-version": "2024-10-21"}
    assert sent["_headers"]["api-key"] == "azure-secret" and "authorization" not in sent["_headers"]
    assert await model.check() == "ok"
    await model.close()


@pytest.mark.parametrize(
    ("api", "version"), [("chat", None), ("responses", "2025-04-01-preview"), ("chat", "v1")]
)
async def test_a_key_client_sends_later_calls_exactly_as_its_first(
    azure: AzureSettings, openai_server: ScriptedOpenAI, api: str, version: str | None
) -> None:
    """The request is built by the client once (deployment path, api-version, api-key) and sent again."""
    overrides = {"openai_api_version": version} if version else {}
    model = stream_model(create_model(azure(azure_openai_api_key="azure-secret", model_api=api, **overrides)))
    openai_server.push(Reply.say("one"), Reply.say("two"))
    assert await text_of(model) == "one"
    assert await text_of(model, [{"role": "user", "content": "another question"}]) == "two"
    first, second = openai_server.requests
    for part in ("_path", "_query"):
        assert second[part] == first[part]
    same = {k: v for k, v in first["_headers"].items() if k != "content-length"}
    assert {k: v for k, v in second["_headers"].items() if k != "content-length"} == same
    assert "azure-secret" in (same.get("api-key"), same.get("authorization", "").removeprefix("Bearer "))
    await model.close()


async def test_key_responses_on_a_dated_version(azure: AzureSettings, openai_server: ScriptedOpenAI) -> None:
    settings = azure(
        azure_openai_api_key="azure-secret", model_api="responses", openai_api_version="2025-04-01-preview"
    )
    model = stream_model(create_model(settings))
    assert isinstance(model, OpenAIResponsesModel)
    openai_server.push(Reply.call("get_order", {"order_id": "A1"}))
    events = [e async for e in model.stream(MESSAGES, [])]
    assert [(e.name, e.arguments) for e in events if isinstance(e, ToolCallRequest)] == [
        ("get_order", '{"order_id":"A1"}')
    ]
    [sent] = openai_server.requests
    assert sent["_path"] == "/openai/responses" and sent["_query"] == {"api-version": "2025-04-01-preview"}
    assert sent["model"] == "shop-gpt" and sent["_headers"]["api-key"] == "azure-secret"
    await model.close()


@pytest.mark.parametrize(
    ("api", "version", "path"),
    [
        ("responses", None, "/openai/v1/responses"),  # the default for Responses: Azure's GA v1 API
        ("chat", "v1", "/openai/v1/chat/completions"),
    ],
)
async def test_the_versionless_v1_api(
    azure: AzureSettings, openai_server: ScriptedOpenAI, api: str, version: str | None, path: str
) -> None:
    settings = azure(azure_openai_api_key="azure-secret", model_api=api, openai_api_version=version)
    assert settings.azure_api_version == "v1"
    model = stream_model(create_model(settings))
    openai_server.push(Reply.say("v1 answer"))
    assert await text_of(model) == "v1 answer"
    [sent] = openai_server.requests
    assert sent["_path"] == path and sent["_query"] == {} and sent["model"] == "shop-gpt"
    assert sent["_headers"]["authorization"] == "Bearer azure-secret"
    assert await model.check() == "ok"
    await model.close()


def test_the_api_version_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_API_VERSION", "MODEL_API"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings(_env_file=None).azure_api_version == "2024-10-21"
    assert load_settings(_env_file=None, model_api="responses").azure_api_version == "v1"
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2024-06-01")  # the old name still works
    assert load_settings(_env_file=None).azure_api_version == "2024-06-01"
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")  # and the contract's name wins
    monkeypatch.setenv("MODEL_API", "responses")
    settings = load_settings(_env_file=None)
    assert settings.azure_api_version == "2025-04-01-preview" and settings.model_api == "responses"
    monkeypatch.setenv("MODEL_API", "completions")
    with pytest.raises(ValueError, match="MODEL_API"):
        load_settings(_env_file=None)


async def test_selection_rules(tmp_path: Path, openai_server: ScriptedOpenAI) -> None:
    keyless = make_settings(
        tmp_path, llm_provider="auto", azure_openai_endpoint="https://res.openai.azure.com"
    )
    assert keyless.model_provider == "azure"  # no key needed: keyless Entra ID
    project = make_settings(
        tmp_path,
        llm_provider="auto",
        openai_api_key="k",
        azure_ai_project_endpoint=f"{openai_server.origin}/api/projects/shop",
        azure_openai_api_key="azure-secret",
    )
    assert project.model_provider == "azure"  # Azure first, even with OPENAI_API_KEY set
    model = stream_model(create_model(project))
    openai_server.push(Reply.say("project"))
    assert await text_of(model) == "project"
    assert openai_server.requests[0]["_path"] == "/openai/deployments/gpt-4o/chat/completions"
    await model.close()
    forced = make_settings(
        tmp_path, llm_provider="openai", azure_openai_endpoint="https://x", openai_api_key="k"
    )
    assert forced.model_provider == "openai"
    with pytest.raises(ValueError, match="AZURE_OPENAI_ENDPOINT"):
        create_model(make_settings(tmp_path, llm_provider="azure"))


# Keyless: Microsoft Entra ID ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "version", "path"),
    [
        ("chat", None, "/openai/deployments/shop-gpt/chat/completions"),
        ("responses", "2025-04-01-preview", "/openai/responses"),
        ("responses", None, "/openai/v1/responses"),
    ],
)
async def test_keyless_sends_entra_bearer_tokens(
    azure: AzureSettings, openai_server: ScriptedOpenAI, api: str, version: str | None, path: str
) -> None:
    credential = TokenDouble()
    openai_server.authorize = credential.valid
    model = stream_model(
        create_model(azure(model_api=api, openai_api_version=version), credential=credential)
    )
    assert isinstance(model.auth, EntraIdAuth) and "Entra ID" in model.auth.description
    openai_server.push(Reply.say("keyless"))
    assert await text_of(model) == "keyless"
    [sent] = openai_server.requests
    assert sent["_path"] == path
    assert sent["_headers"]["authorization"] == "Bearer entra-token-1" and "api-key" not in sent["_headers"]
    if version:
        assert sent["_query"] == {"api-version": version}
    assert credential.scopes == [(AZURE_SCOPE,)]
    assert await model.check() == "ok"
    assert credential.refreshes == 1  # one token served the call and the check
    await model.close()
    assert credential.closed  # the model client closes its credential


async def test_short_lived_tokens_are_fetched_again_and_never_sent_expired(
    azure: AzureSettings, openai_server: ScriptedOpenAI
) -> None:
    # Tokens living 2 s are always inside azure-identity's refresh window (5 minutes before expiry):
    # every call gets a fresh one, and the server, which refuses expired tokens, accepts each.
    credential = TokenDouble(lifetime=2.0)
    openai_server.authorize = credential.valid
    model = stream_model(create_model(azure(), credential=credential))
    for n in range(3):
        openai_server.push(Reply.say(f"call {n}"))
        assert await text_of(model) == f"call {n}"
    seen = [r["_headers"]["authorization"] for r in openai_server.requests]
    assert seen == ["Bearer entra-token-1", "Bearer entra-token-2", "Bearer entra-token-3"]
    assert credential.refreshes == 3
    await model.close()


async def test_a_token_is_kept_then_refreshed_before_it_expires(
    azure: AzureSettings, openai_server: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()  # azure-identity's provider and the credential read the same clock
    monkeypatch.setattr(_authentication, "time", types.SimpleNamespace(time=clock))
    credential = TokenDouble(lifetime=3600.0, clock=clock)
    openai_server.authorize = credential.valid
    model = stream_model(create_model(azure(model_api="responses"), credential=credential))

    async def call() -> str:
        openai_server.push(Reply.say("ok"))
        assert await text_of(model) == "ok"
        return str(openai_server.requests[-1]["_headers"]["authorization"])

    assert await call() == "Bearer entra-token-1"
    clock.now += 3000  # ten minutes left: the cached token is reused
    assert await call() == "Bearer entra-token-1"
    assert credential.refreshes == 1
    clock.now += 450  # 150 s left, still valid: inside the refresh window, so a new one is fetched now
    first = credential.issued[0]
    assert first.expires_on - clock.now == 150
    assert await call() == "Bearer entra-token-2"
    assert credential.refreshes == 2
    clock.now += 600  # the first token has now expired; the second is in use
    assert await call() == "Bearer entra-token-2"
    await model.close()


async def test_a_rejected_token_is_reported_with_the_role_it_needs(
    azure: AzureSettings, openai_server: ScriptedOpenAI
) -> None:
    credential = TokenDouble()
    openai_server.authorize = lambda headers: False  # a valid token, but no role on the resource
    model = stream_model(create_model(azure(), credential=credential))
    status = await model.check()
    assert status.startswith("unauthorized: Azure rejected the Microsoft Entra ID")
    assert "Cognitive Services OpenAI User" in status
    with pytest.raises(ModelUnavailable, match="401.*Cognitive Services OpenAI User"):
        await text_of(model)
    await model.close()


async def test_a_credential_failure_is_said_in_plain_words(
    azure: AzureSettings, openai_server: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    # A real chain of real credentials with nothing to go on fails the way DefaultAzureCredential does.
    chain = ChainedTokenCredential(EnvironmentCredential())
    model = stream_model(create_model(azure(), credential=chain))
    assert await model.check() == f"credential: {NO_IDENTITY}"
    with pytest.raises(ModelUnavailable) as caught:
        await text_of(model)
    assert str(caught.value) == NO_IDENTITY
    assert openai_server.requests == []  # nothing went out without a token
    await model.close()


class _Refusing:
    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("AADSTS7000215: Invalid client secret provided.\nTrace ID: 1")

    async def close(self) -> None:
        return None


async def test_credential_problems_name_what_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    chain = ChainedTokenCredential(EnvironmentCredential(), _Refusing(), EnvironmentCredential())  # type: ignore[arg-type]
    with pytest.raises(ClientAuthenticationError) as caught:
        await chain.get_token(AZURE_SCOPE)
    assert credential_problem(caught.value, chain) == (
        "Microsoft Entra ID refused _Refusing: AADSTS7000215: Invalid client secret provided."
    )
    assert credential_problem(CredentialUnavailableError("No managed identity endpoint found.")) == (
        "no Azure credential available (No managed identity endpoint found.); "
        "run az login or set AZURE_OPENAI_API_KEY"
    )
    assert credential_problem(OSError("boom")).startswith("the Azure credential failed (OSError: boom)")
    await chain.close()


# The app -------------------------------------------------------------------------------------


def _banner(log_file: Path) -> dict[str, Any]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    entries = [orjson.loads(line) for line in log_file.read_text().splitlines()]
    found: dict[str, Any] = next(e for e in entries if "banner" in e)["banner"]
    return found


async def test_the_app_keyless_end_to_end(
    azure: AzureSettings, openai_server: ScriptedOpenAI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credential = TokenDouble()
    monkeypatch.setattr(providers, "azure_credential", lambda: credential)
    openai_server.authorize = credential.valid
    log_file = tmp_path / "app.log"
    settings = azure(model_api="responses", log_to_file=True, log_file_path=log_file, log_level="INFO")
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()
        ready: Any = await (await client.get("/health/readiness")).get_json()
        assert ready["checks"]["model"] == "ok"
        body: Any = await (
            await client.post("/api/v1/chat", json={"session_id": "az", "message": "yo"})
        ).get_json()
        assert body["message"] == "Echo: yo"
        banner = _banner(log_file)
        assert banner["model_provider"] == "azure" and banner["model"] == "shop-gpt"
        assert banner["model_auth"] == "Microsoft Entra ID (keyless, DefaultAzureCredential)"
        assert not credential.closed
    assert credential.closed  # closed at shutdown


async def test_the_app_with_no_identity_says_so(
    azure: AzureSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failing = TokenDouble(
        fail=CredentialUnavailableError("ManagedIdentityCredential: no managed identity found")
    )
    monkeypatch.setattr(providers, "azure_credential", lambda: failing)
    log_file = tmp_path / "app.log"
    app = create_app(azure(log_to_file=True, log_file_path=log_file, log_level="INFO"))
    async with app.test_app():
        response = await app.test_client().get("/health/readiness")
        ready: Any = await response.get_json()
        assert response.status_code == 503
        assert ready["checks"]["model"] == (
            "credential: no Azure credential available "
            "(ManagedIdentityCredential: no managed identity found); run az login or set AZURE_OPENAI_API_KEY"
        )
        banner = _banner(log_file)
        assert banner["model_auth"].startswith(
            "Microsoft Entra ID (keyless, DefaultAzureCredential): no Azure"
        )
        assert "run az login or set AZURE_OPENAI_API_KEY" in banner["model_auth"]
    assert failing.closed


async def test_the_app_with_a_key_says_so(azure: AzureSettings, tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    settings = azure(
        azure_openai_api_key="azure-secret", log_to_file=True, log_file_path=log_file, log_level="INFO"
    )
    app = create_app(settings)
    async with app.test_app():
        assert _banner(log_file)["model_auth"] == "api key (AZURE_OPENAI_API_KEY)"
