"""An OpenAI-compatible server that plays scripted replies over Chat Completions and the Responses API.

It answers the paths the openai client calls: `/v1/...` (OpenAI-compatible), Azure's dated API
(`/openai/deployments/NAME/chat/completions`, `/openai/responses`, `/openai/models`, each with
`?api-version=`) and Azure's versionless `/openai/v1/...`. Every request is recorded with its
path, query and headers, and (whatever the API) its conversation in Chat Completions form under
`_messages` and `_tools`. `authorize`, when set, sees the headers of every request and turns it
away with 401 unless it returns True (the keyless tests check bearer tokens with it).

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
from collections.abc import AsyncIterator, Awaitable, Callable
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
    retry_after: float = 0.0  # the Retry-After of a 429
    fail: str = ""  # Responses: end the stream with a `response.failed` event carrying this message

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
        self.authorize: Callable[[dict[str, str]], bool] | None = None
        self._ids = itertools.count(1)
        self.app = self._build()

    @property
    def origin(self) -> str:
        """http://127.0.0.1:PORT: what Azure settings take as AZURE_OPENAI_ENDPOINT."""
        return self.base_url.removesuffix("/v1")

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
        last = next((m.get("content") or "" for m in reversed(body["_messages"]) if m["role"] == "user"), "")
        if self.tokens is None:
            return Reply.say(f"Echo: {last}")
        return Reply(text=" ".join(f"tok{i}" for i in range(self.tokens)), delay=self.delay)

    def _build(self) -> Quart:
        app = Quart("scripted_openai")

        @app.get("/v1/models")
        @app.get("/openai/models")
        @app.get("/openai/v1/models")
        async def models() -> Response:
            refused = self._refused()
            if refused is not None:
                return refused
            return Response(
                orjson.dumps({"object": "list", "data": [{"id": "test-model", "object": "model"}]}),
                content_type="application/json",
            )

        @app.post("/v1/chat/completions")
        @app.post("/openai/v1/chat/completions")
        @app.post("/openai/deployments/<deployment>/chat/completions")
        async def completions(deployment: str | None = None) -> Response:
            body = await self._record()
            body["_messages"], body["_tools"] = body.get("messages", []), body.get("tools", [])
            refused = self._refused()
            if refused is not None:
                return refused
            reply = self._next(body)
            failed = await self._before(reply)
            if failed is not None:
                return failed
            cid = f"chatcmpl-{next(self._ids)}"
            if not body.get("stream"):
                return Response(orjson.dumps(self._whole(cid, reply)), content_type="application/json")
            return _event_stream(self._chunks(cid, reply), reply)

        @app.post("/v1/responses")
        @app.post("/openai/responses")
        @app.post("/openai/v1/responses")
        async def responses() -> Response:
            body = await self._record()
            problem = responses_problem(body)
            if problem:
                payload = {"error": {"message": problem, "type": "invalid_request_error"}}
                return Response(orjson.dumps(payload), status=400, content_type="application/json")
            body["_messages"] = chat_messages(body["input"])
            body["_tools"] = [
                {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                for t in body.get("tools", [])
            ]
            refused = self._refused()
            if refused is not None:
                return refused
            reply = self._next(body)
            failed = await self._before(reply)
            if failed is not None:
                return failed
            if not body.get("stream"):
                payload = {
                    "error": {"message": "this test server streams only", "type": "invalid_request_error"}
                }
                return Response(orjson.dumps(payload), status=400, content_type="application/json")
            return _event_stream(self._events(f"resp_{next(self._ids)}", reply, body), reply)

        return app

    async def _record(self) -> dict[str, Any]:
        body: dict[str, Any] = orjson.loads(await request.get_data())
        body["_path"] = request.path
        body["_query"] = dict(request.args)
        body["_headers"] = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(body)
        return body

    def _refused(self) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if self.authorize is None or self.authorize(headers):
            return None
        payload = {
            "error": {"code": "401", "message": "Access denied due to invalid subscription key or token"}
        }
        return Response(orjson.dumps(payload), status=401, content_type="application/json")

    async def _before(self, reply: Reply) -> Response | None:
        """The reply's hang, then its error status, if it has one."""
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.status == 200:
            return None
        payload = {"error": {"message": f"scripted {reply.status}", "type": "server_error"}}
        return Response(
            orjson.dumps(payload),
            status=reply.status,
            content_type="application/json",
            headers={"retry-after": f"{reply.retry_after:g}"} if reply.status == 429 else {},
        )

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
            return chat_event(delta, finish, cid)

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

    async def _events(self, rid: str, reply: Reply, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """A Responses stream as OpenAI sends it: `event:` and `data:` lines, the response echoed
        (with the request's tools) when created and when completed."""
        sequence = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        response: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "model": body.get("model"),
            "output": [],
            "parallel_tool_calls": True,
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "tool_choice": "auto",
            "tools": body.get("tools", []),
        }
        yield event("response.created", response=response)
        yield event("response.in_progress", response=response)
        output: list[dict[str, Any]] = []
        sent = 0
        words = reply.text.split(" ") if reply.text else []
        if words:
            mid = f"msg_{rid}"
            message: dict[str, Any] = {
                "id": mid,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            where = {"item_id": mid, "output_index": 0, "content_index": 0}
            yield event("response.output_item.added", output_index=0, item=message)
            yield event("response.content_part.added", **where, part={"type": "output_text", "text": ""})
            for start in range(0, len(words), reply.words_per_chunk):
                if reply.die_after is not None and sent >= reply.die_after:
                    raise ConnectionAbortedError("scripted stream death")
                if reply.delay and sent:
                    await asyncio.sleep(reply.delay)
                piece = " ".join(words[start : start + reply.words_per_chunk])
                if start + reply.words_per_chunk < len(words):
                    piece += " "
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
                sent += 1
            part = {"type": "output_text", "text": reply.text, "annotations": []}
            yield event("response.output_text.done", **where, text=reply.text, logprobs=[])
            yield event("response.content_part.done", **where, part=part)
            message = {**message, "status": "completed", "content": [part]}
            yield event("response.output_item.done", output_index=0, item=message)
            output.append(message)
        for n, (name, arguments) in enumerate(reply.tool_calls):
            index = len(output)
            args = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            call: dict[str, Any] = {
                "id": f"fc_{rid}_{n}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": f"call_{rid}_{n}",
                "name": name,
                "arguments": "",
            }
            where = {"item_id": call["id"], "output_index": index}
            yield event("response.output_item.added", output_index=index, item=call)
            half = len(args) // 2  # arguments arrive in pieces, as real servers send them
            yield event("response.function_call_arguments.delta", **where, delta=args[:half])
            yield event("response.function_call_arguments.delta", **where, delta=args[half:])
            yield event("response.function_call_arguments.done", **where, arguments=args)
            call = {**call, "status": "completed", "arguments": args}
            yield event("response.output_item.done", output_index=index, item=call)
            output.append(call)
        if reply.die_after is not None:
            raise ConnectionAbortedError("scripted stream death")
        if reply.fail:
            failed = {
                **response,
                "status": "failed",
                "error": {"code": "server_error", "message": reply.fail},
            }
            yield event("response.failed", response=failed)
            return
        usage = {
            "input_tokens": 10,
            "output_tokens": max(1, len(words)),
            "total_tokens": 10 + max(1, len(words)),
        }
        yield event(
            "response.completed",
            response={**response, "status": "completed", "output": output, "usage": usage},
        )


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items back in Chat Completions form: what the agent handed its model client."""
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            if not isinstance(content, str):
                content = "".join(part.get("text", "") for part in content)
            out.append({"role": item["role"], "content": content})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return out


def responses_problem(body: dict[str, Any]) -> str | None:
    """What a real Responses endpoint would refuse in this request (400), or None."""
    items = body.get("input")
    if not isinstance(items, list) or not items:
        return "input must be a non-empty list of items"
    calls: set[str] = set()
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("system", "developer", "user", "assistant"):
                return f"invalid role {item.get('role')!r}"
            if not isinstance(item.get("content"), str | list):
                return "message content must be text or a list of parts"
        elif kind == "function_call":
            if not (item.get("call_id") and item.get("name") and isinstance(item.get("arguments"), str)):
                return "function_call needs call_id, name and arguments"
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            if item.get("call_id") not in calls:
                return f"no function call found with call_id {item.get('call_id')!r}"
            if not isinstance(item.get("output"), str):
                return "function_call_output needs an output string"
        else:
            return f"unsupported input item type {kind!r}"
    for tool in body.get("tools", []):
        if tool.get("type") != "function" or not tool.get("name") or "function" in tool:
            return "tools must be function tools in Responses form (type, name, parameters)"
        if tool.get("strict", True) is not False:
            return f"tool {tool['name']} would be strict (the Responses default); its schema is not"
    return None


def _event_stream(body: AsyncIterator[bytes], reply: Reply) -> Response:
    if reply.fragment:
        body = _fragmented(body, reply.fragment)
    response = Response(body, content_type="text/event-stream")
    response.timeout = None
    return response


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


RAW_STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
Respond = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]  # (target, body, writer)


def chunked(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def chat_event(delta: dict[str, Any], finish: str | None = None, cid: str = "chatcmpl-raw") -> bytes:
    """One Chat Completions stream chunk as an SSE event."""
    chunk = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, cid: str = "chatcmpl-raw") -> bytes:
    """`chat_event` in its own HTTP chunk."""
    return chunked(chat_event(delta, finish, cid))


async def serve_raw_http(port: int, respond: Respond) -> None:
    """Keep-alive HTTP/1.1 on plain asyncio, for stand-in models that cost their host next to
    nothing: GET answers the model list, every other request is `respond(target, body, writer)`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET"):
                    models = orjson.dumps(
                        {"object": "list", "data": [{"id": "test-model", "object": "model"}]}
                    )
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(models), models)
                    )
                else:
                    await respond(head.split(b" ", 2)[1], body, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


async def serve_raw(port: int, tokens: int, delay: float) -> None:
    """The default streamed answer on plain asyncio: a stand-in model that costs its host next to nothing.

    The benchmark uses it so that what it measures is the service, not this server's framework.
    Keep-alive HTTP/1.1; every POST gets `tokens` words `delay` seconds apart (as Chat Completions
    chunks, or as Responses events on a `/responses` path); GET gets the model list.
    """
    words = [f"tok{i}" for i in range(tokens)]
    frame = chat_chunk

    def chat_frames() -> list[bytes]:
        frames = [frame({"role": "assistant", "content": ""})]
        frames += [
            frame({"content": word if i == len(words) - 1 else word + " "}) for i, word in enumerate(words)
        ]
        frames.append(frame({}, "stop") + chunked(b"data: [DONE]\n\n"))
        return frames

    def responses_frames(body: bytes) -> list[bytes]:
        """The events OpenAI sends for a text answer, the response echoed with the request's tools."""
        request = orjson.loads(body) if body else {}
        sequence = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            data = {"type": kind, "sequence_number": next(sequence), **fields}
            return chunked(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

        mid = "msg_68af3c1e2a4c8190a3b5e2d7f9c1b04a0e5d6f7a8b9c0d1e"
        response: dict[str, Any] = {
            "id": "resp_68af3c1e1f5c8190b2a4d6e8f0a1c3e50f2d4b6a8c0e1f3a",
            "object": "response",
            "created_at": 0,
            "status": "in_progress",
            "model": "test-model",
            "output": [],
            "parallel_tool_calls": True,
            "store": False,
            "temperature": request.get("temperature", 1.0),
            "tool_choice": "auto",
            "tools": request.get("tools", []),
        }
        text = " ".join(words)
        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": []}
        message = {
            "id": mid,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        frames = [
            event("response.created", response=response)
            + event("response.in_progress", response=response)
            + event("response.output_item.added", output_index=0, item={**message, "content": []})
            + event("response.content_part.added", **where, part={**part, "text": ""})
        ]
        frames += [
            event(
                "response.output_text.delta",
                **where,
                delta=word if i == len(words) - 1 else word + " ",
                logprobs=[],
            )
            for i, word in enumerate(words)
        ]
        done = {**response, "status": "completed", "output": [message]}
        frames.append(
            event("response.output_text.done", **where, text=text, logprobs=[])
            + event("response.content_part.done", **where, part=part)
            + event("response.output_item.done", output_index=0, item=message)
            + event("response.completed", response=done)
        )
        return frames

    async def respond(target: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        frames = responses_frames(body) if b"/responses" in target else chat_frames()
        writer.write(RAW_STREAM_HEAD + frames[0])
        for i, data in enumerate(frames[1:-1]):
            if delay and i:
                await writer.drain()
                await asyncio.sleep(delay)
            writer.write(data)
        writer.write(frames[-1] + b"0\r\n\r\n")

    await serve_raw_http(port, respond)


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
