"""Versioned migrations against the real PostgreSQL, in a schema of the test's own
(db/migrate.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

import chat4all_workers.db
from chat4all_workers.db.migrate import Migration, bundled_migrations, migrate
from harness.waiting import eventually
from tests.db.conftest import PgSchema

MIGRATIONS_DIR = Path(chat4all_workers.db.__file__).parent / "migrations"
WAIT_S = 10.0


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return {r["tablename"] for r in rows}


async def recorded(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


async def waiting_on(conn: asyncpg.Connection, pid: int, locktype: str) -> bool:
    """Whether backend `pid` waits for a lock of `locktype` (advisory, relation, ...)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = $2"
            " AND NOT granted)",
            pid,
            locktype,
        )
    )


def test_bundled_migrations_are_every_sql_file_in_version_order() -> None:
    files = sorted(p for p in MIGRATIONS_DIR.iterdir() if p.suffix == ".sql")

    migrations = bundled_migrations()

    assert [m.version for m in migrations] == [p.stem for p in files]
    assert [m.sql for m in migrations] == [p.read_text(encoding="utf-8") for p in files]
    assert [m.version for m in migrations][:2] == ["0001_initial", "0002_outbox_waiting"]


@pytest.mark.stack
async def test_migrate_applies_every_bundled_migration_to_an_empty_schema(
    pg_schema: PgSchema,
) -> None:
    conn = await pg_schema.connect()

    applied = await migrate(conn)

    assert applied == [m.version for m in bundled_migrations()]
    assert await recorded(conn) == applied
    assert await tables(conn) == {
        "schema_migrations",
        "messages",
        "message_status_history",
        "outbox_events",
        "files",
        "file_chunks",
        "meta_apps",
        "accounts",
    }
    assert await conn.fetchval("SELECT to_regclass('outbox_events_waiting_idx') IS NOT NULL")


@pytest.mark.stack
async def test_migrate_twice_applies_nothing_the_second_time(pg_schema: PgSchema) -> None:
    conn = await pg_schema.connect()
    await migrate(conn)

    again = await migrate(conn)

    assert again == []
    assert await recorded(conn) == [m.version for m in bundled_migrations()]


@pytest.mark.stack
async def test_migrate_applies_only_the_missing_versions_in_order(pg_schema: PgSchema) -> None:
    conn = await pg_schema.connect()
    first = Migration("0001_a", "CREATE TABLE a (n int)")
    await migrate(conn, [first])

    applied = await migrate(
        conn,
        [
            first,
            Migration("0002_b", "INSERT INTO a VALUES (2)"),
            Migration("0003_c", "INSERT INTO a VALUES (3)"),
        ],
    )

    assert applied == ["0002_b", "0003_c"]
    assert await recorded(conn) == ["0001_a", "0002_b", "0003_c"]
    assert [r["n"] for r in await conn.fetch("SELECT n FROM a ORDER BY n")] == [2, 3]


@pytest.mark.stack
async def test_migrate_commits_a_migration_and_its_record_together(pg_schema: PgSchema) -> None:
    conn = await pg_schema.connect()

    await migrate(conn, [Migration("0001_t", "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")])

    same_transaction = await conn.fetchval(
        "SELECT (SELECT xmin FROM t) = (SELECT xmin FROM schema_migrations WHERE version = $1)",
        "0001_t",
    )
    assert same_transaction


@pytest.mark.stack
async def test_migrate_rolls_back_a_failing_migration_and_keeps_the_earlier_ones(
    pg_schema: PgSchema,
) -> None:
    conn = await pg_schema.connect()
    good = Migration("0001_good", "CREATE TABLE good (n int)")
    bad = Migration("0002_bad", "CREATE TABLE half (n int); SELECT no_such_function()")

    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(conn, [good, bad])

    assert await recorded(conn) == ["0001_good"]
    assert await tables(conn) == {"schema_migrations", "good"}  # no `half`


@pytest.mark.stack
async def test_migrate_retries_a_failed_migration_on_the_next_run(pg_schema: PgSchema) -> None:
    conn = await pg_schema.connect()
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(conn, [Migration("0001_x", "INSERT INTO later VALUES (1)")])
    await conn.execute("CREATE TABLE later (n int)")

    applied = await migrate(conn, [Migration("0001_x", "INSERT INTO later VALUES (1)")])

    assert applied == ["0001_x"]
    assert await conn.fetchval("SELECT count(*) FROM later") == 1


@pytest.mark.stack
async def test_migrate_releases_its_lock_after_a_failure(pg_schema: PgSchema) -> None:
    conn, other = await pg_schema.connect(), await pg_schema.connect()
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(conn, [Migration("0001_x", "NOT SQL")])

    async with asyncio.timeout(WAIT_S):  # would wait for the lock forever if still held
        applied = await migrate(other, [Migration("0001_x", "SELECT 1")])

    assert applied == ["0001_x"]


@pytest.mark.stack
async def test_migrate_concurrent_runs_wait_for_each_other_and_apply_once(
    pg_schema: PgSchema,
) -> None:
    first, second, gatekeeper = [await pg_schema.connect() for _ in range(3)]
    await first.execute("CREATE TABLE gate (n int)")
    await first.execute("CREATE TABLE runs (n int)")
    migrations = [Migration("0001_slow", "LOCK TABLE gate; INSERT INTO runs VALUES (1)")]
    gate = gatekeeper.transaction()
    await gate.start()
    await gatekeeper.execute("LOCK TABLE gate")  # the first run holds its lock, blocked here
    runs: list[asyncio.Task[list[str]]] = []
    try:
        runs.append(asyncio.create_task(migrate(first, migrations)))
        await eventually(
            lambda: waiting_on(gatekeeper, first.get_server_pid(), "relation"),
            timeout_s=WAIT_S,
            message="the first run blocked inside its migration",
        )
        runs.append(asyncio.create_task(migrate(second, migrations)))
        await eventually(
            lambda: waiting_on(gatekeeper, second.get_server_pid(), "advisory"),
            timeout_s=WAIT_S,
            message="the second run waiting for the migration lock",
        )
    finally:
        await gate.rollback()
        async with asyncio.timeout(WAIT_S):
            results = await asyncio.gather(*runs)

    assert results == [["0001_slow"], []]
    assert await first.fetchval("SELECT count(*) FROM runs") == 1
    assert await recorded(first) == ["0001_slow"]


@pytest.mark.stack
@pytest.mark.parametrize("attempt", range(5))  # a fresh schema each: a race, tried 5 times
async def test_migrate_concurrent_first_runs_on_an_empty_schema_all_succeed(
    pg_schema: PgSchema, attempt: int
) -> None:
    connections = [await pg_schema.connect() for _ in range(4)]
    versions = [m.version for m in bundled_migrations()]

    async with asyncio.timeout(WAIT_S):
        results = await asyncio.gather(*(migrate(conn) for conn in connections))

    assert sorted(results, key=len) == [[], [], [], versions]
    assert await recorded(connections[0]) == versions


@pytest.mark.stack
async def test_migrate_an_empty_list_applies_nothing(pg_schema: PgSchema) -> None:
    conn = await pg_schema.connect()

    applied = await migrate(conn, [])

    assert applied == []
    assert await recorded(conn) == []
    assert await tables(conn) == {"schema_migrations"}
