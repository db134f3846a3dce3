"""What each action of `chat4all-workers accounts` does: input checked first (a problem is one
line, exit code 2), then one connection to PostgreSQL (a problem there is one line, exit 1)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from chat4all_workers.cli.accounts import listing
from chat4all_workers.cli.accounts.inputs import (
    KEY,
    KEY_RULE,
    PROVIDER_ID,
    PROVIDER_ID_RULE,
    BadInputError,
    check,
    check_key,
    read_secrets,
    sealing_keyring,
)
from chat4all_workers.cli.output import connect_postgres, out
from chat4all_workers.config import Settings

if TYPE_CHECKING:
    import asyncpg

    from chat4all_workers.accounts.sealing import Keyring


def add_account(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    try:
        check_key(args.channel, args.key)
        check(PROVIDER_ID, args.provider_id, "--provider-id", PROVIDER_ID_RULE)
        check(KEY, args.app_id, "--app", KEY_RULE)
        keyring = sealing_keyring(settings)
        (token,) = read_secrets([("token", args.token_file)], what=f"{args.channel}/{args.key}")
    except BadInputError as exc:
        return _refuse("add", str(exc))
    return _database(
        "add", settings, lambda conn: _add_account(settings, args, keyring, token, conn)
    )


async def _add_account(
    settings: Settings,
    args: argparse.Namespace,
    keyring: Keyring,
    token: str,
    conn: asyncpg.Connection,
) -> int:
    from chat4all_workers.accounts import writer
    from chat4all_workers.accounts.model import environment_accounts
    from chat4all_workers.db import accounts as store

    env_accounts, env_apps = environment_accounts(settings)
    known_app = any(app.app_id == args.app_id for app in env_apps)
    if not known_app and await store.find_app(conn, args.app_id) is None:
        return _refuse(
            "add",
            f"no app {args.app_id}: add it first with `chat4all-workers accounts app-add "
            f"{args.app_id}`",
        )
    try:
        row = await writer.put_account(
            conn,
            keyring,
            channel=args.channel,
            key=args.key,
            provider_id=args.provider_id,
            app_id=args.app_id,
            token=token,
            max_rate_per_s=args.rate,
            pair_burst=args.pair_burst,
            pair_interval_s=args.pair_interval_s,
            replace=args.update,
        )
    except store.ProviderIdTakenError as exc:
        return _refuse("add", str(exc))
    if row is None:
        return _refuse(
            "add", f"{args.channel}/{args.key} exists: --update redefines it (accounts list)"
        )
    verb = "updated" if row.version > 1 else "added"
    out(f"{verb} {row.ref} (provider id {row.provider_id}, app {row.app_id}, ")
    out(f"version {row.version})\n")
    if any(a.channel == row.channel and a.provider_id == row.provider_id for a in env_accounts):
        sys.stderr.write(
            f"note: the environment's default {row.channel} account has provider id "
            f"{row.provider_id}: while it does, the workers leave {row.ref} out\n"
        )
    return 0


def add_app(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    try:
        check(KEY, args.app_id, "APP_ID", KEY_RULE)
        if args.app_id.startswith("default-"):
            raise BadInputError(
                f"{args.app_id} is the environment's app ({args.app_id.removeprefix('default-')}"
                " section): choose another id"
            )
        keyring = sealing_keyring(settings)
        secret, verify_token = read_secrets(
            [("app secret", args.secret_file), ("verify token", args.verify_token_file)],
            what=f"app {args.app_id}",
        )
    except BadInputError as exc:
        return _refuse("app-add", str(exc))

    async def write(conn: asyncpg.Connection) -> int:
        from chat4all_workers.accounts import writer

        row = await writer.put_app(
            conn,
            keyring,
            app_id=args.app_id,
            secret=secret,
            verify_token=verify_token,
            replace=args.update,
        )
        if row is None:
            return _refuse("app-add", f"app {args.app_id} exists: --update replaces its secrets")
        out(f"{'updated' if row.updated_at > row.created_at else 'added'} app {row.app_id}\n")
        return 0

    return _database("app-add", settings, write)


def list_accounts(settings: Settings, args: argparse.Namespace) -> Awaitable[int]:
    async def show(conn: asyncpg.Connection) -> int:
        from chat4all_workers.db import accounts as store

        apps, rows = await store.load(conn)
        if args.json:
            doc = listing.as_json(rows, apps)
            out(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            listing.render(settings, rows, apps)
        return 0

    return _database("list", settings, show)


def set_enabled(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    action: str = args.accounts_command
    try:
        check_key(args.channel, args.key)
    except BadInputError as exc:
        return _refuse(action, str(exc))

    async def write(conn: asyncpg.Connection) -> int:
        from chat4all_workers.db import accounts as store

        enabled = action == "enable"
        row = await store.set_enabled(conn, args.channel, args.key, enabled=enabled)
        if row is None:
            return _refuse(action, f"no account {args.channel}/{args.key} (accounts list)")
        out(f"{row.ref} {action}d (version {row.version})\n")
        return 0

    return _database(action, settings, write)


def rotate_token(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    try:
        check_key(args.channel, args.key)
        keyring = sealing_keyring(settings)
        (token,) = read_secrets([("token", args.token_file)], what=f"{args.channel}/{args.key}")
    except BadInputError as exc:
        return _refuse("rotate-token", str(exc))

    async def write(conn: asyncpg.Connection) -> int:
        from chat4all_workers.accounts import writer

        row = await writer.rotate_token(
            conn, keyring, channel=args.channel, key=args.key, token=token
        )
        if row is None:
            return _refuse("rotate-token", f"no account {args.channel}/{args.key} (accounts list)")
        out(f"{row.ref}: token rotated (version {row.version})\n")
        return 0

    return _database("rotate-token", settings, write)


def new_key(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.accounts.sealing import new_key_line

    key_id = args.key_id or f"k{datetime.now(UTC):%Y%m%d}"
    try:
        line = new_key_line(key_id)
    except ValueError:
        return _refuse("new-key", f"--id: expected 1-32 of A-Z a-z 0-9 _ -, got {key_id!r:.40}")
    out(line + "\n")
    return 0


def _refuse(action: str, problem: str) -> int:
    sys.stderr.write(f"chat4all-workers accounts {action}: {problem}\n")
    return 2


def _database(
    action: str, settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[int]]
) -> Awaitable[int]:
    """Run `work` on one connection; a database without the accounts tables, or one that says
    no, is one line and exit code 1."""

    async def run() -> int:
        import asyncpg

        conn = await connect_postgres(settings)
        try:
            return await work(conn)
        except asyncpg.UndefinedTableError:
            sys.stderr.write(
                f"chat4all-workers accounts {action}: postgres: the accounts tables are "
                "missing: run `chat4all-workers db migrate`\n"
            )
            return 1
        except asyncpg.PostgresError as exc:
            sys.stderr.write(f"chat4all-workers accounts {action}: postgres: {exc}\n")
            return 1
        finally:
            await conn.close()

    return run()
