"""What the two OpenAI model clients share: the raw streamed POST, its retry rules, readiness, auth.

`OpenAIChatModel` (agent/openai_chat.py, Chat Completions) and `OpenAIResponsesModel`
(agent/openai_responses.py, the Responses API) differ only in the path they post to, the body
they build and how they fold the server-sent events into text and tool calls (a `StreamReader`).
Everything else lives here once: the body encoded once with orjson and posted through the
openai client's generic `post` (its auth, Azure paths, api-version query, base URL, timeouts and
status errors), raw bytes split into lines per network read, retries only before the first
token with exponential backoff that honours `Retry-After`, and the plain-worded failures.

With a static credential (an API key, or none) the request the client builds is the same for
every call but its body, so it is built once and sent again with each new body (`_Resend`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx2
import openai
import orjson

from msev15.agent.model import ModelEvent, ModelUnavailable, TextDelta
from msev15.metrics import metrics
from msev15.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Retryable(Exception):
    """A failure worth another try, as long as nothing has been streamed yet."""

    def __init__(self, reason: str, retry_after: float | None = None, kind: str = "stream") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.kind = kind  # a short fixed word for metrics and traces


class ModelAuthError(Exception):
    """The credential could not produce a token; `reason` says so in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelAuth(Protocol):
    """How the model client authenticates: named for the banner, checked for readiness, closed at the end."""

    description: str

    async def check(self) -> str:
        """ "ok", or what is wrong with the credential in plain words."""
        ...

    async def close(self) -> None: ...


class StaticAuth:
    """An API key (or none): nothing to fetch, check or close."""

    def __init__(self, description: str) -> None:
        self.description = description

    async def check(self) -> str:
        return "ok"

    async def close(self) -> None:
        return None


class StreamReader(Protocol):
    """Folds one streamed answer's SSE lines into text pieces and, at the end, its tool calls and finish."""

    def feed(self, lines: list[bytes], text: list[str]) -> bool:
        """Read complete lines, appending text to `text`; True once the answer is complete."""
        ...

    def end(self) -> list[ModelEvent]:
        """The tool calls and the finish, once the body is over; `Retryable` if it ended unfinished."""
        ...


class OpenAIStreamModel:
    """A streamed model call over the official client, parsed from the raw stream with orjson.

    The raw streaming response keeps the client's auth, Azure and base-URL handling while
    avoiding a pydantic object per event (the hot path of every streamed answer). Subclasses
    name the `path`, build the request body and make a `StreamReader` per call.
    """

    path = ""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        provider: str,
        max_retries: int = 3,
        retry_base: float = 0.5,
        temperature: float | None = 0.2,
        auth: ModelAuth | None = None,
        http: httpx2.AsyncClient | None = None,
    ) -> None:
        self._client = client
        self.model_name = model
        self.provider = provider
        self.max_retries = max_retries
        self.retry_base = retry_base
        self.temperature = temperature
        self.auth: ModelAuth = auth or StaticAuth("api key")
        # `http` is the client's own HTTP client; a token credential signs every request anew
        self._resend = _Resend(http) if http is not None and isinstance(self.auth, StaticAuth) else None

    def request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def reader(self) -> StreamReader:
        raise NotImplementedError

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        # Encoded once with orjson and posted as-is: the typed `create()` would walk every message
        # and tool schema through its TypedDicts and then encode them again with stdlib json.
        body = orjson.dumps(self.request(messages, tools))
        attempt = 0
        recorded = metrics()
        while True:
            emitted = False
            try:
                async for event in self._one_stream(body):
                    emitted = True
                    yield event
                return
            except ModelUnavailable as exc:
                recorded.model_error(self.provider, exc.kind)
                raise
            except Retryable as exc:
                recorded.model_error(self.provider, exc.kind)
                if emitted or attempt >= self.max_retries:
                    raise ModelUnavailable(exc.reason, exc.kind) from None
                recorded.model_retry(self.provider)
                delay = self.retry_base * (2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 30.0))
                log.warning("model call failed (%s); retry %d in %.2fs", exc.reason, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _one_stream(self, body: bytes) -> AsyncIterator[ModelEvent]:
        # Long by design: every way a model call can fail is mapped here, in one place, next to the read.
        reader = self.reader()
        done = False
        try:
            # The client's documented generic `post` keeps its auth, Azure deployment paths, base URL,
            # timeouts and status errors; `cast_to=Response` with `stream=True` hands back the raw stream.
            response = await self._post(body)
            try:
                # Raw bytes split here, not the client's line decoder: every SSE line that arrived in
                # one network read is parsed in one pass and its text leaves as one delta.
                # Without a content-encoding the decoding layer only passes bytes on: skip it.
                plain = response.headers.get("content-encoding", "identity") == "identity"
                chunks = response.aiter_raw() if plain else response.aiter_bytes()
                pending = b""
                async for chunk in chunks:
                    pending += chunk
                    if b"\n" not in chunk:
                        continue
                    lines = pending.split(b"\n")
                    pending = lines.pop()
                    text: list[str] = []
                    try:
                        done = reader.feed(lines, text)
                    except Retryable:
                        if text:  # said before the failure, in the same read: it was said
                            yield TextDelta("".join(text))
                        raise
                    if text:
                        yield TextDelta("".join(text))
                    if done:
                        await drain(chunks)
                        break
                else:  # the body ended: a last line may have come without its newline
                    tail: list[str] = []
                    done = reader.feed([pending, b""], tail)
                    if tail:
                        yield TextDelta("".join(tail))
            finally:
                await response.aclose()  # the body is released however the reading ends
        except ModelAuthError as exc:
            raise ModelUnavailable(exc.reason, "auth") from None
        except openai.APIStatusError as exc:
            if exc.status_code in RETRYABLE_STATUS:
                raise Retryable(
                    f"model server answered {exc.status_code}",
                    retry_after(exc.response),
                    kind=f"http_{exc.status_code}",
                ) from None
            if exc.status_code in (401, 403):
                raise ModelUnavailable(
                    f"model server refused the request ({exc.status_code}): {self._refusal()}", "auth"
                ) from None
            raise ModelUnavailable(
                f"model server refused the request ({exc.status_code})", "refused"
            ) from None
        except openai.APIConnectionError as exc:  # APITimeoutError included
            if caused_by(exc, ssl.SSLCertVerificationError):
                raise ModelUnavailable("model server's TLS certificate is not trusted", "tls") from None
            if isinstance(exc, openai.APITimeoutError):
                raise Retryable("model server timed out", kind="timeout") from None
            raise Retryable("model server unreachable", kind="unreachable") from None
        except httpx2.TimeoutException:
            raise Retryable("model stream timed out", kind="timeout") from None
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            raise Retryable(f"model stream broke off ({type(exc).__name__})") from None
        except orjson.JSONDecodeError:
            raise Retryable("model stream sent malformed data", kind="malformed") from None
        for event in reader.end():
            yield event

    async def _post(self, body: bytes) -> httpx2.Response:
        """The streamed POST, failing as the client's `post` does (APIStatusError, APIConnectionError)."""
        if self._resend is not None and self._resend.ready:
            return await self._resend.send(body)
        response: httpx2.Response = await self._client.post(
            self.path,
            cast_to=httpx2.Response,
            content=body,
            options={"headers": {"Content-Type": "application/json", "Accept": "text/event-stream"}},
            stream=True,
        )
        if self._resend is not None:
            self._resend.keep(response.request)
        return response

    def _refusal(self) -> str:
        if self.auth.description.startswith("api key"):
            return "the model server rejected the API key"
        return (
            f"Azure rejected the {self.auth.description} token; the identity needs the "
            "Cognitive Services OpenAI User role on the resource"
        )

    async def check(self) -> str:
        status = await self.auth.check()
        if status != "ok":
            return f"credential: {status}"
        try:
            await self._client.with_options(timeout=2.0, max_retries=0).models.list()
        except ModelAuthError as exc:
            return f"credential: {exc.reason}"
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            return f"unauthorized: {self._refusal()}"
        except openai.APIStatusError:
            return "ok"  # reachable; some compatible servers have no /models
        except openai.APIConnectionError as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        try:
            await self._client.close()
        finally:
            await self.auth.close()


class _Resend:
    """The model call's request as the openai client built it, sent again with each new body.

    Building a request in the client (options model, URL merging, a dozen default headers, each
    normalised twice) cost about 0.2 ms per call: a fifth of the CPU of a short streamed turn, and
    of the wait for the first token when 100 turns start at once (bench/README.md). With a static
    credential nothing in it changes but the body and its length (tests/test_model_apis.py compares
    the two on the wire), so the URL, headers and timeouts of the first call serve every later one.
    Failures are raised as the client raises them, so callers cannot tell the two apart.
    """

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._template: httpx2.Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []

    @property
    def ready(self) -> bool:
        return self._template is not None

    def keep(self, request: httpx2.Request) -> None:
        self._template = request
        self._headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]

    async def send(self, body: bytes) -> httpx2.Response:
        template = self._template
        assert template is not None
        request = httpx2.Request(
            template.method, template.url, headers=self._headers, content=body, extensions=template.extensions
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.TimeoutException as exc:  # as the client's own send maps them
            raise openai.APITimeoutError(request=request) from exc
        except httpx2.HTTPError as exc:
            raise openai.APIConnectionError(request=request) from exc
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise openai.APIStatusError(
                f"model server answered {response.status_code}", response=response, body=None
            )
        return response


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", "error"))[:200]
    return str(error)[:200]


async def drain(lines: AsyncIterator[Any], limit: float = 0.5) -> None:
    """Read the body to its end (briefly) so the connection goes back to the pool instead of closing."""
    try:
        async with asyncio.timeout(limit):
            async for _ in lines:
                pass
    except TimeoutError:
        pass  # a server that keeps the body open costs us the connection, not the answer


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain under `exc`: a rejected server certificate arrives as a connect
    error (a connect timeout on the SDK's aiohttp backend), and retrying it cannot help."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def client_timeout(settings: Settings) -> httpx2.Timeout:
    return httpx2.Timeout(settings.model_timeout_seconds, connect=min(5.0, settings.model_timeout_seconds))
