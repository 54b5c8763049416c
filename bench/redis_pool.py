"""A Redis connection pool with a first-come-first-served wait, for the benchmark's A/B only.

redis-py's `BlockingConnectionPool` makes waiters wait on an `asyncio.Condition`: a released
connection wakes one waiter, but a task that asks at that moment takes it first, and the woken
one waits again. Under a burst, turns that ask for a connection for every event keep taking
them, and the turns waiting to start can wait past their timeout. This pool is redis-py's plain
`ConnectionPool` behind an `asyncio.Semaphore` of the same size: while anyone waits, newcomers
queue behind them (asyncio's semaphore is fair), and the wait is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError


class FifoPool(ConnectionPool):
    def __init__(self, *args: Any, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self._gate = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            async with asyncio.timeout(self.timeout):
                await self._gate.acquire()
        except TimeoutError as err:
            raise RedisConnectionError("No connection available.") from err
        try:
            connection: AbstractConnection = await super().get_connection()
        except BaseException:
            self._gate.release()
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._gate.release()


def install() -> None:
    """msev15.stores.sessions.redis.connect, on a FifoPool: read by RedisSessionStore.open when the
    app starts."""
    from msev15.stores.sessions import redis as sessions_redis

    sessions_redis.connect = functools.partial(sessions_redis.connect, pool_class=FifoPool)
