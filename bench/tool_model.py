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

import orjson

from tests.openai_server import RAW_STREAM_HEAD, chat_chunk, chunked, serve_raw_http

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


def answer(body: bytes) -> bytes:
    """The whole streamed reply to one request."""
    messages = orjson.loads(body).get("messages", []) if body else []
    last = messages[-1] if messages else {}
    out = [frame({"role": "assistant", "content": ""})]
    if last.get("role") == "tool":
        out += [frame({"content": "Here is "}), frame({"content": "your order."}), frame({}, "stop")]
    else:
        name, arguments = CREATE_ORDER if "buy" in str(last.get("content", "")) else GET_ORDER
        call = {"index": 0, "id": "call_1", "type": "function"}
        call["function"] = {"name": name, "arguments": orjson.dumps(arguments).decode()}
        out += [frame({"tool_calls": [call]}), frame({}, "tool_calls")]
    return RAW_STREAM_HEAD + b"".join(out) + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def frame(delta: dict[str, object], finish: str | None = None) -> bytes:
    return chat_chunk(delta, finish, cid="chatcmpl-tool")


async def serve(port: int) -> None:
    async def respond(target: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer(body))

    await serve_raw_http(port, respond)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
