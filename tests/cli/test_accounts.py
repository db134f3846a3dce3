"""`chat4all-workers accounts` as an operator runs it, a process with its stdin, stdout and
stderr, against a migrated database of the test's own: secrets in from stdin or files, sealed at
rest (pg_dump shows none), never echoed in output or logs."""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from chat4all_workers.accounts.sealing import Keyring, account_aad, app_aad, new_key_line
from chat4all_workers.db import accounts as store
from chat4all_workers.db.migrate import migrate

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
KEY = new_key_line("k1")
TOKEN = "EAAG-stdin-token-7f3a9c"
FILE_TOKEN = "EAAG-file-token-5e1d0a"
ROTATED = "EAAG-rotated-token-2b8c"
APP_SECRET = "app-secret-91c2f0"
VERIFY_TOKEN = "verify-token-4d6e11"
SECRETS = (TOKEN, FILE_TOKEN, ROTATED, APP_SECRET, VERIFY_TOKEN)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class Cli:
    """`chat4all-workers accounts ...` in a process of its own, with only the environment given
    (the database, the accounts key) in a directory without a supervisor.toml. Keeps every
    run, so a test can check that no output ever held a secret."""

    def __init__(self, database: str, workdir: Path) -> None:
        self.database = database
        self.workdir = workdir
        self.runs: list[Run] = []

    async def __call__(self, *args: str, stdin: str = "", key: str | None = KEY) -> Run:
        return await asyncio.to_thread(self._run, args, stdin, key)

    def _run(self, args: Sequence[str], stdin: str, key: str | None) -> Run:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
            "DATABASE_URL": self.database,
            "CHAT4ALL_OBSERVABILITY_LOG_LEVEL": "DEBUG",  # every log line, to check them all
        }
        if key is not None:
            env["ACCOUNTS_KEY"] = key
        done = subprocess.run(
            [sys.executable, "-m", "chat4all_workers", "accounts", *args],
            input=stdin,
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        run = Run(done.returncode, done.stdout, done.stderr)
        self.runs.append(run)
        return run

    def said(self) -> str:
        return "".join(run.out + run.err for run in self.runs)


@pytest.fixture
async def database(pg_database: str) -> str:
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return pg_database


@pytest.fixture
def cli(database: str, tmp_path: Path) -> Cli:
    return Cli(database, tmp_path)


async def stored(database: str) -> tuple[list[store.AppRow], list[store.AccountRow]]:
    conn = await asyncpg.connect(database)
    try:
        return await store.load(conn)
    finally:
        await conn.close()


async def add_app(cli: Cli, app_id: str = "123") -> None:
    run = await cli("app-add", app_id, stdin=f"{APP_SECRET}\n{VERIFY_TOKEN}\n")
    assert (run.code, run.err) == (0, ""), run.err


def pg_dump() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    path = found[-1] if found else shutil.which("pg_dump")
    assert path is not None, "pg_dump is not installed"
    return path


# -- add, list, rotate, disable -------------------------------------------------------------------


async def test_accounts_cli_adds_an_account_with_the_token_from_stdin_sealed(cli: Cli) -> None:
    await add_app(cli)

    run = await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123", stdin=TOKEN)
    apps, (row,) = await stored(cli.database)

    assert run.code == 0
    assert run.out == "added whatsapp/acme (provider id 1001, app 123, version 1)\n"
    keyring = Keyring.parse(KEY)
    assert keyring.open(row.token_sealed, aad=account_aad("whatsapp", "acme"), ref=row.ref) == TOKEN
    assert (row.max_rate_per_s, row.pair_burst, row.pair_interval_s) == (None, None, None)
    (app,) = apps
    assert keyring.open(app.secret_sealed, aad=app_aad("123", "secret"), ref=app.ref) == APP_SECRET
    verify = keyring.open(app.verify_token_sealed, aad=app_aad("123", "verify_token"), ref=app.ref)
    assert verify == VERIFY_TOKEN
    assert not any(secret in cli.said() for secret in SECRETS)


async def test_accounts_cli_adds_an_account_with_the_token_from_a_file_and_its_pace(
    cli: Cli, tmp_path: Path
) -> None:
    await add_app(cli)
    token_file = tmp_path / "token"
    token_file.write_text(FILE_TOKEN + "\n")

    run = await cli(
        "add", "instagram", "acme", "--provider-id", "1784", "--app", "123",
        "--rate", "5", "--pair-burst", "3", "--pair-interval-s", "1.5",
        "--token-file", str(token_file),
    )  # fmt: skip
    _, (row,) = await stored(cli.database)

    assert run.code == 0
    assert (row.max_rate_per_s, row.pair_burst, row.pair_interval_s) == (5.0, 3, 1.5)
    opened = Keyring.parse(KEY).open(
        row.token_sealed, aad=account_aad("instagram", "acme"), ref=row.ref
    )
    assert opened == FILE_TOKEN
    assert FILE_TOKEN not in cli.said()


async def test_accounts_cli_list_shows_every_account_and_app_but_no_secret(cli: Cli) -> None:
    await add_app(cli)
    await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123", stdin=TOKEN)
    await cli(
        "add", "whatsapp", "paced", "--provider-id", "1002", "--app", "default-whatsapp",
        "--rate", "5", stdin=FILE_TOKEN,
    )  # fmt: skip

    text = await cli("list")
    as_json = await cli("list", "--json")

    assert text.code == as_json.code == 0
    lines = text.out.splitlines()
    assert lines[0].split()[:4] == ["CHANNEL", "KEY", "PROVIDER", "ID"]
    assert lines[1].split()[:5] == ["whatsapp", "acme", "1001", "123", "80"]
    assert lines[1].split()[-1] == "set"
    assert lines[2].split()[:5] == ["whatsapp", "paced", "1002", "default-whatsapp", "5"]
    assert "123  set     set" in text.out
    assert '"token": "set"' in as_json.out
    assert '"secret": "set"' in as_json.out
    assert not any(secret in cli.said() for secret in SECRETS)


async def test_accounts_cli_rotates_disables_and_enables_bumping_the_version(cli: Cli) -> None:
    await add_app(cli)
    await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123", stdin=TOKEN)

    rotated = await cli("rotate-token", "whatsapp", "acme", stdin=ROTATED + "\n")
    disabled = await cli("disable", "whatsapp", "acme")
    _, (row,) = await stored(cli.database)
    enabled = await cli("enable", "whatsapp", "acme")

    assert rotated.out == "whatsapp/acme: token rotated (version 2)\n"
    assert disabled.out == "whatsapp/acme disabled (version 3)\n"
    assert enabled.out == "whatsapp/acme enabled (version 4)\n"
    assert row.enabled is False
    opened = Keyring.parse(KEY).open(
        row.token_sealed, aad=account_aad("whatsapp", "acme"), ref=row.ref
    )
    assert opened == ROTATED
    assert not any(secret in cli.said() for secret in SECRETS)


async def test_accounts_cli_add_refuses_an_existing_key_unless_updating(cli: Cli) -> None:
    await add_app(cli)
    add = ("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123")
    await cli(*add, stdin=TOKEN)

    again = await cli(*add, stdin=TOKEN)
    updated = await cli(*add, "--rate", "7", "--update", stdin=ROTATED)
    _, (row,) = await stored(cli.database)

    assert again.code == 2
    assert again.err == (
        "chat4all-workers accounts add: whatsapp/acme exists: --update redefines it "
        "(accounts list)\n"
    )
    assert updated.code == 0
    assert updated.out.startswith("updated whatsapp/acme")
    assert (row.version, row.max_rate_per_s) == (2, 7.0)


async def test_accounts_cli_add_refuses_an_app_that_does_not_exist(cli: Cli) -> None:
    run = await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "999", stdin=TOKEN)

    assert run.code == 2
    assert "no app 999: add it first with `chat4all-workers accounts app-add 999`" in run.err
    assert await stored(cli.database) == ([], [])


async def test_accounts_cli_add_refuses_a_number_another_key_has(cli: Cli) -> None:
    await add_app(cli)
    await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123", stdin=TOKEN)

    run = await cli(
        "add", "whatsapp", "other", "--provider-id", "1001", "--app", "123", stdin=TOKEN
    )

    assert run.code == 2
    assert run.err.endswith("provider id 1001 is already account whatsapp/acme\n")


@pytest.mark.parametrize(
    ("stdin", "problem"),
    [
        ("", "standard input holds 0 non-empty lines; expected 1: token"),
        ("  \n", "standard input holds 0 non-empty lines; expected 1: token"),
        (f"{TOKEN}\n{TOKEN}\n", "standard input holds 2 non-empty lines; expected 1: token"),
        ("EAAG one\n", "the token from standard input holds spaces or control characters"),
    ],
)
async def test_accounts_cli_add_refuses_a_token_that_is_not_one_line(
    cli: Cli, stdin: str, problem: str
) -> None:
    await add_app(cli)

    run = await cli("add", "whatsapp", "acme", "--provider-id", "1", "--app", "123", stdin=stdin)

    assert run.code == 2
    assert run.err == f"chat4all-workers accounts add: {problem}\n"
    assert TOKEN not in run.err


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("add", "whatsapp", "acme", "--provider-id", "1", "--app", "123", "--token"), "--token"),
        (("rotate-token", "whatsapp", "acme", "--token"), "--token"),
        (("app-add", "123", "--secret"), "--secret"),
        (("app-add", "123", "--verify-token"), "--verify-token"),
    ],
)
async def test_accounts_cli_refuses_a_secret_on_the_command_line_without_repeating_it(
    cli: Cli, args: tuple[str, ...], option: str
) -> None:
    # Without its own option, `--token SECRET` would be argparse's abbreviation of
    # `--token-file SECRET`, and the secret printed as a missing file's name.
    run = await cli(*args, TOKEN)

    assert run.code == 2
    assert run.err.startswith(f"chat4all-workers accounts {args[0]}: {option} is not taken:")
    assert TOKEN not in run.err
    assert TOKEN not in run.out


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("default", "the default whatsapp account is the environment's"),
        ("Acme", "KEY: expected 1-64 of a-z 0-9 _ . -"),
    ],
)
async def test_accounts_cli_add_refuses_a_key_the_table_cannot_hold(
    cli: Cli, key: str, problem: str
) -> None:
    run = await cli("add", "whatsapp", key, "--provider-id", "1", "--app", "123", stdin=TOKEN)

    assert run.code == 2
    assert problem in run.err
    assert len(run.err.splitlines()) == 1


async def test_accounts_cli_disabling_an_unknown_account_is_refused(cli: Cli) -> None:
    run = await cli("disable", "whatsapp", "nobody")

    assert run.code == 2
    assert (
        run.err == "chat4all-workers accounts disable: no account whatsapp/nobody (accounts list)\n"
    )


async def test_accounts_cli_without_a_key_says_how_to_get_one(cli: Cli) -> None:
    run = await cli("rotate-token", "whatsapp", "acme", stdin=TOKEN, key=None)

    assert run.code == 2
    assert run.err == (
        "chat4all-workers accounts rotate-token: no accounts key to seal with: set ACCOUNTS_KEY "
        "or ACCOUNTS_KEY_FILE (`chat4all-workers accounts new-key` makes a key)\n"
    )


async def test_accounts_cli_a_bad_key_is_a_configuration_error_naming_it(cli: Cli) -> None:
    run = await cli("list", key="k1:c2hvcnQ=")

    assert run.code == 2
    assert run.err == (
        "chat4all-workers: configuration error: accounts.key (env ACCOUNTS_KEY): entry 1 (k1): "
        "the key is 5 bytes, AES-256 takes 32 (chat4all-workers accounts new-key makes one)\n"
    )


async def test_accounts_cli_before_the_migration_says_to_migrate(
    pg_database: str, tmp_path: Path
) -> None:
    run = await Cli(pg_database, tmp_path)("list")

    assert run.code == 1
    assert run.err == (
        "chat4all-workers accounts list: postgres: the accounts tables are missing: run "
        "`chat4all-workers db migrate`\n"
    )


async def test_accounts_cli_new_key_prints_a_key_the_setting_takes(cli: Cli) -> None:
    run = await cli("new-key", "--id", "k7", key=None)

    assert run.code == 0
    (line,) = run.out.splitlines()
    assert line.startswith("k7:")
    assert Keyring.parse(line).key_ids == ("k7",)
    assert (await cli("list", key=line)).code == 0


# -- at rest --------------------------------------------------------------------------------------


async def test_accounts_cli_pg_dump_of_the_database_holds_no_secret_in_clear(cli: Cli) -> None:
    await add_app(cli)
    await cli("add", "whatsapp", "acme", "--provider-id", "1001", "--app", "123", stdin=TOKEN)
    await cli("rotate-token", "whatsapp", "acme", stdin=ROTATED)

    dump = await asyncio.to_thread(
        subprocess.run,
        [pg_dump(), "--dbname", cli.database],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert "whatsapp\tacme\t1001\t123\t" in dump.stdout  # the rows are there...
    assert not any(secret in dump.stdout for secret in SECRETS)  # ...their secrets are not
    assert not any(secret.encode().hex() in dump.stdout for secret in SECRETS)
