"""The physical-limit baseline: a bare Quart app served with the service's hypercorn.toml.

`hypercorn --config hypercorn.toml bench.bare_app:app --bind 127.0.0.1:PORT`

- `GET /health`: a tiny JSON body, as the service's `/health` answers.
- `GET /sse?n=20&ms=50`: `n` token events `ms` milliseconds apart, then one `done` event, framed and
  sized like the service's SSE events.
- WebSocket `/ws`: echoes every frame; a `{"type": "stream", "n": 20, "ms": 50}` frame is answered
  with `n` token frames `ms` apart and a `done` frame instead (the bare twin of the chat channel).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from quart import Quart, Response, request, websocket

app = Quart(__name__)
_STARTED = time.time()
_IDS = {"session_id": "bench-session", "tenant_id": "default"}


def _token(i: int) -> dict[str, str]:
    return {"type": "token", "content": f"tok{i} ", **_IDS}


def _done(n: int) -> dict[str, object]:
    text = "".join(f"tok{i} " for i in range(n))
    return {"type": "done", "message": text, "message_count": 2, "request_id": "bench", **_IDS}


@app.get("/health")
async def health() -> Response:
    body = {"status": "healthy", "timestamp": time.time(), "uptime_seconds": time.time() - _STARTED}
    return Response(orjson.dumps(body), content_type="application/json")


@app.get("/sse")
async def sse() -> Response:
    n = int(request.args.get("n", 20))
    delay = float(request.args.get("ms", 50)) / 1000

    async def body() -> AsyncIterator[bytes]:
        for i in range(n):
            if delay and i:
                await asyncio.sleep(delay)
            yield b"data: " + orjson.dumps(_token(i)) + b"\n\n"
        yield b"data: " + orjson.dumps(_done(n)) + b"\n\n"

    response = Response(body(), content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None
    return response


@app.websocket("/ws")
async def ws() -> None:
    await websocket.accept()
    while True:
        raw = await websocket.receive()
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            frame = None
        if not (isinstance(frame, dict) and frame.get("type") == "stream"):
            await websocket.send(raw)
            continue
        n, delay = int(frame.get("n", 20)), float(frame.get("ms", 50)) / 1000
        for i in range(n):
            if delay and i:
                await asyncio.sleep(delay)
            await websocket.send(orjson.dumps(_token(i)).decode())
        await websocket.send(orjson.dumps(_done(n)).decode())
