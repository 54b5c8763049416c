"""Session stores: memory (default), SQLite (one host) and Redis (several hosts), one contract."""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from pathlib import Path

from msev15.settings import Settings
from msev15.stores.sessions.base import (
    LockTable,
    Message,
    Session,
    SessionKey,
    SessionLimitError,
    SessionOwnedElsewhere,
    SessionStore,
    SessionStoreUnavailable,
    renewed,
)
from msev15.stores.sessions.memory import MemorySessionStore

__all__ = [
    "LockTable",
    "MemorySessionStore",
    "Message",
    "Session",
    "SessionKey",
    "SessionLimitError",
    "SessionOwnedElsewhere",
    "SessionStore",
    "SessionStoreUnavailable",
    "hypercorn_workers",
    "open_session_store",
    "renewed",
]

log = logging.getLogger(__name__)


async def open_session_store(settings: Settings) -> SessionStore:
    """The store SESSION_STORE names; durable stores open lazily, so a down Redis does not stop the start."""
    lock_wait = settings.turn_timeout_seconds + 5  # a waiting turn outlasts the one it waits for
    if settings.session_store == "sqlite":
        from msev15.stores.sessions.sqlite import SqliteSessionStore

        return await SqliteSessionStore.open(
            settings.session_db_path,
            ttl_seconds=settings.session_ttl_seconds,
            max_sessions=settings.max_sessions,
            max_per_tenant=settings.max_sessions_per_tenant,
            max_messages=settings.max_messages_per_session,
            lock_wait=lock_wait,
        )
    if settings.session_store == "redis":
        from msev15.stores.sessions.redis import RedisSessionStore

        return await RedisSessionStore.open(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            pool_wait=settings.session_store_wait_seconds,
            ttl_seconds=settings.session_ttl_seconds,
            max_per_tenant=settings.max_sessions_per_tenant,
            max_messages=settings.max_messages_per_session,
            lock_wait=lock_wait,
        )
    workers = hypercorn_workers()
    if workers > 1:
        log.warning(
            "SESSION_STORE=memory with %d Hypercorn workers: each worker process keeps its own sessions, "
            "so a conversation forgets itself when a request lands on another worker. "
            "Use SESSION_STORE=sqlite (one host) or SESSION_STORE=redis (several hosts), or workers = 1.",
            workers,
        )
    return MemorySessionStore(
        ttl_seconds=settings.session_ttl_seconds,
        max_sessions=settings.max_sessions,
        max_per_tenant=settings.max_sessions_per_tenant,
        max_messages=settings.max_messages_per_session,
    )


def hypercorn_workers(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """Hypercorn's worker count as far as the app can tell (the server does not tell its app).

    Hypercorn spawns its workers, which inherit its command line: `-w N`/`--workers N` wins,
    then `workers` in the `--config` TOML file. Outside Hypercorn's command line (`python app.py`
    serves one process) `WEB_CONCURRENCY` is the only hint.
    """
    argv = sys.argv if argv is None else argv
    env = dict(os.environ) if env is None else env
    program = Path(argv[0]) if argv else Path()
    if program.name == "hypercorn" or (program.name == "__main__.py" and program.parent.name == "hypercorn"):
        workers = _flag(argv, "-w", "--workers")
        if workers is not None:
            return _int(workers)
        config = _flag(argv, "-c", "--config")
        if config is not None and not config.startswith(("python:", "file:")):
            try:
                with open(config.removeprefix("toml:"), "rb") as fh:
                    return _int(str(tomllib.load(fh).get("workers", 1)))
            except (OSError, tomllib.TOMLDecodeError):
                return 1
        return 1
    return _int(env.get("WEB_CONCURRENCY", "1"))


def _flag(argv: list[str], short: str, long: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return None


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return 1
