"""The service with benchmark-only swaps (bench/run.py's A/Bs); the service proper (`app:app`) has
neither switch.

`hypercorn ... bench.service_app:app`, with
- `BENCH_MODEL_TRANSPORT`: the model client's HTTP transport (bench/model_transports.py);
- `BENCH_TURN_BUFFER=redis`: the turn buffer in Redis Streams at `REDIS_URL` whatever the session
  store, so the Redis buffer can be measured against the in-process one with the same (memory)
  session store;
- `BENCH_REDIS_POOL=fifo`: the Redis client's pool behind a first-come-first-served gate
  (bench/redis_pool.py), against redis-py's `BlockingConnectionPool`;
- `BENCH_SQLITE_ROOM=pk`: the SQLite store without the per-new-session counts (`make_room`
  deletes a previous session of that id by primary key and checks no limit): the ceiling of
  keeping those counts cheaply, to price them; never a setting of the service.
"""

from __future__ import annotations

import os

from bench import model_transports

model_transports.use(os.environ.get("BENCH_MODEL_TRANSPORT", "lean"))

if os.environ.get("BENCH_TURN_BUFFER") == "redis":
    from msev15.stores.sessions.redis import connect
    from msev15.stores.turns_redis import RedisTurnBuffer, reader_client
    from msev15.web import services as _services

    def _redis_buffer(keep_seconds: float, **_: object) -> RedisTurnBuffer:  # takes MemoryTurnBuffer's place
        url = os.environ["REDIS_URL"]
        pool = int(os.environ.get("REDIS_MAX_CONNECTIONS", "256"))
        wait = float(os.environ.get("SESSION_STORE_WAIT_SECONDS", "10"))
        return RedisTurnBuffer(connect(url, pool, wait), reader_client(url), keep_seconds)

    _services.MemoryTurnBuffer = _redis_buffer  # type: ignore[misc,assignment]  # read when the app starts

if os.environ.get("BENCH_REDIS_POOL") == "fifo":
    from bench import redis_pool

    redis_pool.install()

if os.environ.get("BENCH_SQLITE_ROOM") == "pk":
    import sqlite3

    from msev15.stores.sessions import sqlite_ops

    def _make_room_by_pk(db: sqlite3.Connection, tenant_id: str, session_id: str, *_: object) -> None:
        db.execute(
            "DELETE FROM chat_sessions WHERE tenant_id = ? AND session_id = ?", (tenant_id, session_id)
        )

    sqlite_ops.make_room = _make_room_by_pk  # type: ignore[assignment]  # looked up at each save

from app import app  # noqa: E402 - after the swaps, which the app reads when it starts

__all__ = ["app"]
