"""Versioned SQL migrations: files `NNNN_name.sql` beside this module, applied in order.

Each file runs in its own transaction and is recorded in `schema_migrations`; an advisory lock,
taken before the table is even created, makes concurrent `db migrate` runs (one per container at
start-up, on an empty database too) wait for each other instead of racing, so applying is
idempotent.
"""

from __future__ import annotations

import importlib.resources

import asyncpg

from chat4all_workers.frozen import frozen

_LOCK_KEY = 0x43_34_41_4D  # "C4AM": one advisory lock id for migrations, cluster-wide


@frozen
class Migration:
    version: str
    sql: str


def bundled_migrations() -> list[Migration]:
    folder = importlib.resources.files("chat4all_workers.db") / "migrations"
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing of `migrations` (None: the bundled ones; an empty list applies
    nothing); returns the versions applied by this call.

    The advisory lock is taken before anything else, creating `schema_migrations` included, so
    concurrent first runs on an empty database wait for each other instead of racing to create it.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version text PRIMARY KEY,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for migration in bundled_migrations() if migrations is None else migrations:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
                )
            applied.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
