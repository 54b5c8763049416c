"""The throwaway PostgreSQL of the tests answers on loopback only, with trust for `postgres`."""

from __future__ import annotations

import asyncpg

from tests.postgres_server import PostgresServer


async def test_the_cluster_answers_on_loopback(postgres_server: PostgresServer) -> None:
    name = postgres_server.new_database_name()
    admin = await asyncpg.connect(postgres_server.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = await asyncpg.connect(postgres_server.url(name))
    try:
        assert await db.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await db.fetchval("SELECT current_database()") == name
    finally:
        await db.close()
