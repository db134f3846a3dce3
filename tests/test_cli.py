"""The command line as an operator meets it: exit codes, one-line errors, hidden secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from harness.stack import StackEndpoints

REPO = Path(__file__).resolve().parent.parent


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT4ALL_", "ROLES"))}
    return subprocess.run(
        [sys.executable, "-m", "chat4all_workers", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_unknown_role_exits_2_naming_the_valid_roles() -> None:
    result = cli("run", "--roles", "router,nosuch")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown role 'nosuch'" in lines[0]
    assert "valid roles: all, router, status_updater" in lines[0]


def test_cli_bad_env_value_exits_2_naming_the_key() -> None:
    result = cli("run", "--roles", "gc", env={"GC_BATCH_SIZE": "ten"})

    assert result.returncode == 2
    assert "gc.batch_size (env GC_BATCH_SIZE)" in result.stderr


def test_cli_bad_file_value_exits_2_naming_the_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text('[outbox]\npoll_interval_ms = "soon"\n')

    result = cli("--config", str(config), "config", "show")

    assert result.returncode == 2
    assert f"outbox.poll_interval_ms ({config})" in result.stderr


def test_cli_config_show_hides_secrets_and_names_sources() -> None:
    result = cli(
        "config",
        "show",
        env={"DATABASE_URL": "postgresql://u:hunter2@db/x", "MINIO_SECRET_KEY": "s3cr3t-value"},
    )

    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert "s3cr3t-value" not in result.stdout
    assert "env DATABASE_URL" in result.stdout


def test_cli_roles_lists_every_role_and_whether_enabled() -> None:
    result = cli("roles", env={"ROLES": "gc"})

    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert lines["gc"] == "enabled"
    assert lines["router"] == "disabled"
    assert set(lines) >= {
        "router",
        "status_updater",
        "outbox",
        "backfill",
        "merge",
        "gc",
        "whatsapp_mock",
        "instagram_mock",
    }


def test_cli_run_once_rejects_a_long_running_role() -> None:
    result = cli("run-once", "router")

    assert result.returncode == 2
    assert "not periodic" in result.stderr


@pytest.mark.stack
async def test_cli_db_migrate_is_idempotent(stack: StackEndpoints, pg_database: str) -> None:
    first = cli("db", "migrate", env={"DATABASE_URL": pg_database})
    second = cli("db", "migrate", env={"DATABASE_URL": pg_database})

    assert first.returncode == 0, first.stderr
    assert "0001_initial" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    conn = await asyncpg.connect(pg_database)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    finally:
        await conn.close()
    assert {"messages", "message_status_history", "outbox_events", "files", "file_chunks"} <= tables


# What `roles` and a usage error must not import (cli.py defers these; its docstring says why):
# each client library, and our modules that pull them in. (`config show` reads every role's own
# settings section, so it imports the role modules.)
HEAVY_MODULES = (
    "aiokafka",
    "redis",
    "asyncpg",
    "miniopy_async",
    "aiohttp",
    "chat4all_workers.supervisor",
    "chat4all_workers.resources",
    "chat4all_workers.role",
    "chat4all_workers.status",
)
IMPORT_PROBE = """
import contextlib, sys
from chat4all_workers.cli import main
for argv in (["roles"], ["--bogus"]):
    with contextlib.suppress(SystemExit):
        main(argv)
heavy = sys.argv[1:]
loaded = [m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)]
print("imported:", *sorted(loaded))
"""


def test_cli_roles_and_usage_errors_import_no_client_and_no_role() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, *HEAVY_MODULES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported:"
