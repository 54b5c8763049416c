"""Both database engines for one test: a SQLite file in tmp_path, or a fresh PostgreSQL database.

The `engine` fixture parametrises a test over "sqlite" and "postgresql". On PostgreSQL each test
gets its own database, cloned from a template (migrated and seeded once per session, or empty),
on the session's throwaway cluster (tests/postgres_server.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from msev15.stores.audit import AuditLog
from msev15.stores.orders import OrderRepository
from tests.postgres_server import PostgresServer

ENGINES = ("sqlite", "postgresql")
SEEDED_TEMPLATE = "msev15_seeded"
_made_templates: set[tuple[int, str]] = set()


async def _admin(server: PostgresServer, sql: str) -> None:
    conn = await asyncpg.connect(server.admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _seeded_template(server: PostgresServer) -> str:
    """A database migrated and filled with the demo data by the code under test, once a session."""
    key = (server.port, SEEDED_TEMPLATE)
    if key not in _made_templates:
        await _admin(server, f'CREATE DATABASE "{SEEDED_TEMPLATE}"')
        repo = await open_postgres(server.url(SEEDED_TEMPLATE), seed=True)
        await repo.close()  # a template must have no connections when it is cloned
        _made_templates.add(key)
    return SEEDED_TEMPLATE


async def new_database(server: PostgresServer, seeded: bool) -> str:
    """The URL of a new database: a clone of the seeded template, or empty."""
    name = server.new_database_name()
    template = await _seeded_template(server) if seeded else "template0"
    await _admin(server, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return server.url(name)


async def drop_database(server: PostgresServer, url: str) -> None:
    """Drop a test's database (its connections cut): the cluster lives in RAM, keep it small."""
    await _admin(server, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


async def open_postgres(
    url: str, seed: bool, pool_size: int = 10, wait_seconds: float = 5.0
) -> OrderRepository:
    from msev15.stores.postgres import PostgresDatabase

    database = await PostgresDatabase.open(url, pool_size, wait_seconds, label="test")
    try:
        return await OrderRepository.on(database, seed=seed)
    except BaseException:
        await database.close()
        raise


@dataclass
class Engine:
    """One test's database on one engine; `open` may be called again to reopen the same one."""

    name: str
    tmp_path: Path
    server: PostgresServer | None = None
    url: str | None = None
    opened: list[OrderRepository] = field(default_factory=list)

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    @property
    def path(self) -> Path:
        return self.tmp_path / "orders.db"

    async def database_url(self, seed: bool = True) -> str:
        assert self.server is not None
        if self.url is None:
            self.url = await new_database(self.server, seeded=seed)
        return self.url

    async def open(self, seed: bool = True, **options: Any) -> OrderRepository:
        """The repository (a new pool or connection each call: a second call is a second instance)."""
        if not self.postgres:
            return await OrderRepository.open(self.path, seed=seed, **options)
        return await open_postgres(await self.database_url(seed), seed=seed, **options)

    async def audit(self, repo: OrderRepository) -> AuditLog:
        if self.postgres:
            return AuditLog.on(repo.database)
        return await AuditLog.open(self.path)

    async def settings_overrides(self) -> dict[str, Any]:
        """What `make_settings` needs for an app on this engine."""
        if not self.postgres:
            return {}
        return {"database_url": await self.database_url()}


def make_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    name = str(request.param)
    if name == "postgresql":
        return Engine(name, tmp_path, server=request.getfixturevalue("postgres_server"))
    return Engine(name, tmp_path)


async def dispose(engine: Engine) -> None:
    if engine.server is not None and engine.url is not None:
        await drop_database(engine.server, engine.url)
