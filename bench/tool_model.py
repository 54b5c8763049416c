"""A zero-latency model that uses the order tools: `python -m bench.tool_model --port P`.

Plain asyncio, as tests/openai_server.py's raw mode, so the figures measure the service and its
database, not this server. Chat Completions, streamed: a user message with "buy" in it gets a
`create_order` call (one unit of BENCH-1), any other user message a `get_order` call for
ORD-1001 (alice@example.com); once the tool's result is in, a short answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import orjson

GET_ORDER = ("get_order", {"order_id": "ORD-1001", "customer_email": "alice@example.com"})
CREATE_ORDER = (
    "create_order",
    {
        "customer_email": "bench@example.com",
        "customer_name": "Bench Buyer",
        "items": [{"sku": "BENCH-1", "quantity": 1}],
        "shipping_address": "1 Bench Road, Springfield",
    },
)
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _frame(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-tool",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return _chunked(b"data: " + orjson.dumps(chunk) + b"\n\n")


def answer(body: bytes) -> bytes:
    """The whole streamed reply to one request."""
    messages = orjson.loads(body).get("messages", []) if body else []
    last = messages[-1] if messages else {}
    out = [_frame({"role": "assistant", "content": ""})]
    if last.get("role") == "tool":
        out += [_frame({"content": "Here is "}), _frame({"content": "your order."}), _frame({}, "stop")]
    else:
        name, arguments = CREATE_ORDER if "buy" in str(last.get("content", "")) else GET_ORDER
        call = {"index": 0, "id": "call_1", "type": "function"}
        call["function"] = {"name": name, "arguments": orjson.dumps(arguments).decode()}
        out += [_frame({"tool_calls": [call]}), _frame({}, "tool_calls")]
    return _HEAD + b"".join(out) + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"


async def serve(port: int) -> None:
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
                    writer.write(answer(body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
