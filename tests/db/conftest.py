"""PostgreSQL for the unit tests of `db/`: a schema of its own per test.

One scratch database per test session (per pytest-xdist worker), dropped at the end, holds a
fresh schema per test; a test's connections see only that schema (`search_path`), so its tables
start empty and no other test writes to them. Advisory locks belong to the database, not the
schema, so the scratch database keeps the tests' locks (the GC lock, the migration lock) apart
from every other database on the server, and within it the tests of one worker run one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from chat4all_workers.db.migrate import migrate
from harness.stack import StackEndpoints, unique_name

CLOSE_TIMEOUT_S = 10.0


class PgSchema:
    """A schema of the test's own: `await schema.connect()` opens a connection whose
    `search_path` is the schema alone. Every connection is closed and the schema dropped after
    the test (`close`)."""

    def __init__(self, database_url: str, name: str) -> None:
        self.database_url = database_url
        self.name = name
        self._connections: list[asyncpg.Connection] = []

    async def connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.database_url, server_settings={"search_path": self.name})
        self._connections.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self._connections:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await conn.close(timeout=CLOSE_TIMEOUT_S)


@pytest.fixture(scope="session")
async def pg_scratch_database(stack: StackEndpoints) -> AsyncIterator[str]:
    """The DSN of a database for this session's `db/` tests; dropped (WITH (FORCE)) at the end."""
    name = unique_name("dbunit").replace("-", "_")
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pg_schema(pg_scratch_database: str) -> AsyncIterator[PgSchema]:
    """An empty schema of the test's own (see PgSchema)."""
    name = unique_name("t").replace("-", "_")
    admin = await asyncpg.connect(pg_scratch_database)
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        schema = PgSchema(pg_scratch_database, name)
        try:
            yield schema
        finally:
            await schema.close()
            await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await admin.close()


@pytest.fixture
async def conn(pg_schema: PgSchema) -> asyncpg.Connection:
    """A connection to the test's own schema, with every bundled migration applied."""
    connection = await pg_schema.connect()
    await migrate(connection)
    return connection
