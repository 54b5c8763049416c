"""An OpenAI-compatible Chat Completions server that plays scripted replies.

Used by the tests (in-process, on a free 127.0.0.1 port) and by the benchmark (standalone:
`python -m tests.openai_server --port 8100 --tokens 20 --delay-ms 0`). When no reply is
scripted it echoes the last user message, or (given `tokens`) streams that many words,
`delay` seconds apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from quart import Quart, Response, request


@dataclass
class Reply:
    """One scripted answer. `times` < 0 repeats forever."""

    text: str = ""
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    status: int = 200
    words_per_chunk: int = 1
    delay: float = 0.0
    hang: float = 0.0
    die_after: int | None = None
    times: int = 1
    fragment: int = 0  # >0: send the stream in pieces of this many bytes, cutting lines apart

    @classmethod
    def say(cls, text: str, **kw: Any) -> Reply:
        return cls(text=text, **kw)

    @classmethod
    def call(cls, name: str, arguments: dict[str, Any] | str | None = None, **kw: Any) -> Reply:
        return cls(tool_calls=[(name, arguments if arguments is not None else {})], **kw)

    @classmethod
    def calls(cls, *calls: tuple[str, dict[str, Any] | str], **kw: Any) -> Reply:
        return cls(tool_calls=list(calls), **kw)

    @classmethod
    def error(cls, status: int, times: int = 1) -> Reply:
        return cls(status=status, times=times)


class ScriptedOpenAI:
    def __init__(self, tokens: int | None = None, delay: float = 0.0) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.tokens = tokens
        self.delay = delay
        self.base_url = ""
        self._ids = itertools.count(1)
        self.app = self._build()

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next(self, body: dict[str, Any]) -> Reply:
        if self.script:
            reply = self.script[0]
            if reply.times > 0:
                reply.times -= 1
                if reply.times == 0:
                    self.script.popleft()
            return reply
        last = next(
            (m.get("content") or "" for m in reversed(body.get("messages", [])) if m["role"] == "user"), ""
        )
        if self.tokens is None:
            return Reply.say(f"Echo: {last}")
        return Reply(text=" ".join(f"tok{i}" for i in range(self.tokens)), delay=self.delay)

    def _build(self) -> Quart:
        app = Quart("scripted_openai")

        @app.get("/v1/models")
        @app.get("/openai/models")
        async def models() -> Response:
            return Response(
                orjson.dumps({"object": "list", "data": [{"id": "test-model", "object": "model"}]}),
                content_type="application/json",
            )

        @app.post("/v1/chat/completions")
        @app.post("/openai/deployments/<deployment>/chat/completions")
        async def completions(deployment: str | None = None) -> Response:
            body = orjson.loads(await request.get_data())
            body["_path"] = request.path
            body["_headers"] = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(body)
            reply = self._next(body)
            if reply.hang:
                await asyncio.sleep(reply.hang)
            if reply.status != 200:
                payload = {"error": {"message": f"scripted {reply.status}", "type": "server_error"}}
                return Response(
                    orjson.dumps(payload),
                    status=reply.status,
                    content_type="application/json",
                    headers={"retry-after": "0"} if reply.status == 429 else {},
                )
            cid = f"chatcmpl-{next(self._ids)}"
            if not body.get("stream"):
                return Response(orjson.dumps(self._whole(cid, reply)), content_type="application/json")
            body = self._chunks(cid, reply)
            if reply.fragment:
                body = _fragmented(body, reply.fragment)
            response = Response(body, content_type="text/event-stream")
            response.timeout = None
            return response

        return app

    def _whole(self, cid: str, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{i}",
                    "type": "function",
                    "function": {
                        "name": n,
                        "arguments": a if isinstance(a, str) else orjson.dumps(a).decode(),
                    },
                }
                for i, (n, a) in enumerate(reply.tool_calls)
            ]
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
        }

    async def _chunks(self, cid: str, reply: Reply) -> AsyncIterator[bytes]:
        def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "test-model",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        sent = 0
        yield frame({"role": "assistant", "content": ""})
        words = reply.text.split(" ") if reply.text else []
        for start in range(0, len(words), reply.words_per_chunk):
            if reply.die_after is not None and sent >= reply.die_after:
                raise ConnectionAbortedError("scripted stream death")
            if reply.delay and sent:
                await asyncio.sleep(reply.delay)
            piece = " ".join(words[start : start + reply.words_per_chunk])
            if start + reply.words_per_chunk < len(words):
                piece += " "
            yield frame({"content": piece})
            sent += 1
        for index, (name, arguments) in enumerate(reply.tool_calls):
            args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            half = len(args) // 2  # arguments arrive in pieces, as real servers send them
            yield frame(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": f"call_{cid}_{index}",
                            "type": "function",
                            "function": {"name": name, "arguments": args[:half]},
                        }
                    ]
                }
            )
            yield frame({"tool_calls": [{"index": index, "function": {"arguments": args[half:]}}]})
        if reply.die_after is not None:
            raise ConnectionAbortedError("scripted stream death")
        yield frame({}, "tool_calls" if reply.tool_calls else "stop")
        yield b"data: [DONE]\n\n"


async def _fragmented(frames: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    async for frame in frames:
        for start in range(0, len(frame), size):
            yield frame[start : start + size]
            await asyncio.sleep(0.001)  # separate writes, so the client really reads pieces


@contextlib.asynccontextmanager
async def running_openai_server(
    tokens: int | None = None, delay: float = 0.0
) -> AsyncIterator[ScriptedOpenAI]:
    from tests.servers import serve_on_loopback

    server = ScriptedOpenAI(tokens, delay)
    async with serve_on_loopback(server.app) as port:
        server.base_url = f"http://127.0.0.1:{port}/v1"
        yield server


_RAW_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def serve_raw(port: int, tokens: int, delay: float) -> None:
    """The default streamed answer on plain asyncio: a stand-in model that costs its host next to nothing.

    The benchmark uses it so that what it measures is the service, not this server's framework.
    Keep-alive HTTP/1.1; every POST gets `tokens` words `delay` seconds apart; GET gets the model list.
    """
    words = [f"tok{i}" for i in range(tokens)]

    def frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-raw",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "test-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        data = b"data: " + orjson.dumps(chunk) + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET"):
                    body = orjson.dumps({"object": "list", "data": [{"id": "test-model", "object": "model"}]})
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                    continue
                writer.write(_RAW_STREAM_HEAD + frame({"role": "assistant", "content": ""}))
                for i, word in enumerate(words):
                    if delay and i:
                        await writer.drain()
                        await asyncio.sleep(delay)
                    writer.write(frame({"content": word if i == len(words) - 1 else word + " "}))
                data = b"data: [DONE]\n\n"
                writer.write(frame({}, "stop") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--raw", action="store_true", help="plain asyncio, default answer only (for benchmarks)"
    )
    args = parser.parse_args()
    if args.raw:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_raw(args.port, args.tokens, args.delay_ms / 1000))
        return
    server = ScriptedOpenAI(args.tokens, args.delay_ms / 1000)

    async def run() -> None:
        from tests.servers import serve_on_loopback

        async with serve_on_loopback(server.app, port=args.port):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
