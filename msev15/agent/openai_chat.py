"""Chat Completions over the official openai client: OpenAI-compatible servers and Azure OpenAI."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import orjson

from msev15.agent.model import ModelEvent, ModelFinish, ModelUnavailable, TextDelta, ToolCallRequest
from msev15.settings import Settings

log = logging.getLogger(__name__)


_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIChatModel:
    """Chat Completions over the official client, parsed from the raw stream with orjson.

    The raw streaming response keeps the client's auth, Azure and base-URL handling while
    avoiding a pydantic object per chunk (the hot path of every streamed answer).
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        provider: str,
        max_retries: int = 3,
        retry_base: float = 0.5,
        temperature: float | None = 0.2,
    ) -> None:
        self._client = client
        self.model_name = model
        self.provider = provider
        self.max_retries = max_retries
        self.retry_base = retry_base
        self.temperature = temperature

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AsyncIterator[ModelEvent]:
        request: dict[str, Any] = {"model": self.model_name, "messages": messages, "stream": True}
        if tools:
            request["tools"] = tools
        if self.temperature is not None:
            request["temperature"] = self.temperature
        # Encoded once with orjson and posted as-is: the typed `create()` would walk every message
        # and tool schema through its TypedDicts and then encode them again with stdlib json.
        body = orjson.dumps(request)
        attempt = 0
        while True:
            emitted = False
            try:
                async for event in self._one_stream(body):
                    emitted = True
                    yield event
                return
            except _Retryable as exc:
                if emitted or attempt >= self.max_retries:
                    raise ModelUnavailable(exc.reason) from None
                delay = self.retry_base * (2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 30.0))
                log.warning("model call failed (%s); retry %d in %.2fs", exc.reason, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _one_stream(self, body: bytes) -> AsyncIterator[ModelEvent]:
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        done = False
        try:
            # The client's documented generic `post` keeps its auth, Azure deployment paths, base URL,
            # timeouts and status errors; `cast_to=Response` with `stream=True` hands back the raw stream.
            response = await self._client.post(
                "/chat/completions",
                cast_to=httpx2.Response,
                content=body,
                options={"headers": {"Content-Type": "application/json", "Accept": "text/event-stream"}},
                stream=True,
            )
            try:
                # Raw bytes split here, not the client's line decoder: every SSE line that arrived in
                # one network read is parsed in one pass and its text leaves as one delta.
                chunks = response.aiter_bytes()
                pending = b""
                async for chunk in chunks:
                    pending += chunk
                    if b"\n" not in chunk:
                        continue
                    lines = pending.split(b"\n")
                    pending = lines.pop()
                    text: list[str] = []
                    done, finish = _read_lines(lines, text, calls, finish)
                    if text:
                        yield TextDelta("".join(text))
                    if done:
                        await _drain(chunks)
                        break
                else:  # the body ended: a last line may have come without its newline
                    tail: list[str] = []
                    done, finish = _read_lines([pending], tail, calls, finish)
                    if tail:
                        yield TextDelta("".join(tail))
            finally:
                await response.aclose()  # the body is released however the reading ends
        except openai.APIStatusError as exc:
            if exc.status_code in _RETRYABLE_STATUS:
                raise _Retryable(
                    f"model server answered {exc.status_code}", _retry_after(exc.response)
                ) from None
            raise ModelUnavailable(f"model server refused the request ({exc.status_code})") from None
        except openai.APIConnectionError as exc:  # APITimeoutError included
            if _caused_by(exc, ssl.SSLCertVerificationError):
                raise ModelUnavailable("model server's TLS certificate is not trusted") from None
            raise _Retryable(
                "model server timed out"
                if isinstance(exc, openai.APITimeoutError)
                else "model server unreachable"
            ) from None
        except httpx2.TimeoutException:
            raise _Retryable("model stream timed out") from None
        except (httpx2.TransportError, httpx2.StreamError) as exc:
            raise _Retryable(f"model stream broke off ({type(exc).__name__})") from None
        except orjson.JSONDecodeError:
            raise _Retryable("model stream sent malformed data") from None
        if not done and finish is None:
            raise _Retryable("model stream ended before it finished")
        for index in sorted(calls):
            slot = calls[index]
            yield ToolCallRequest(slot["id"] or f"call_{index}", slot["name"], slot["args"])
        yield ModelFinish(finish or "stop")

    async def check(self) -> str:
        try:
            await self._client.with_options(timeout=2.0, max_retries=0).models.list()
        except openai.AuthenticationError:
            return "unauthorized: the model server rejected the API key"
        except openai.APIStatusError:
            return "ok"  # reachable; some compatible servers have no /models
        except openai.APIConnectionError as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    async def close(self) -> None:
        await self._client.close()


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _read_lines(
    lines: list[bytes], text: list[str], calls: dict[int, dict[str, str]], finish: str | None
) -> tuple[bool, str | None]:
    """Fold complete SSE lines into text and tool calls; returns (saw [DONE], finish reason so far)."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return True, finish
        if data:
            finish = _read_chunk(orjson.loads(data), text, calls) or finish
    return False, finish


def _read_chunk(chunk: dict[str, Any], text: list[str], calls: dict[int, dict[str, str]]) -> str | None:
    """Fold one completion chunk into the text and tool-call pieces; returns its finish reason."""
    if chunk.get("error"):
        raise _Retryable(f"model stream error: {_short(chunk['error'])}")
    finish = None
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            text.append(content)
        for part in delta.get("tool_calls") or ():
            slot = calls.setdefault(part.get("index", len(calls)), {"id": "", "name": "", "args": ""})
            if part.get("id"):
                slot["id"] = part["id"]
            function = part.get("function") or {}
            if function.get("name"):
                slot["name"] += function["name"]
            if function.get("arguments"):
                slot["args"] += function["arguments"]
        finish = choice.get("finish_reason") or finish
    return finish


async def _drain(lines: AsyncIterator[Any], limit: float = 0.5) -> None:
    """Read the body to its end (briefly) so the connection goes back to the pool instead of closing."""
    try:
        async with asyncio.timeout(limit):
            async for _ in lines:
                pass
    except TimeoutError:
        pass  # a server that keeps the body open costs us the connection, not the answer


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain under `exc`: a rejected server certificate arrives as a connect
    error (a connect timeout on the SDK's aiohttp backend), and retrying it cannot help."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(response: httpx2.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _short(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message", "error"))[:200]
    return str(error)[:200]


def client_timeout(settings: Settings) -> httpx2.Timeout:
    return httpx2.Timeout(settings.model_timeout_seconds, connect=min(5.0, settings.model_timeout_seconds))


def _origin(url: str | None) -> str | None:
    """The resource origin of an Azure AI project endpoint (…/api/projects/NAME)."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
