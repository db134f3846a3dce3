"""`chat4all-workers accounts`: the sending accounts and Meta apps kept in PostgreSQL (many
senders, docs/operations.md "Onboarding a business").

Secrets (tokens, app secrets, verify tokens) come from a file or standard input, never from
argv (which `ps` and shell histories show), and are never printed: `list` says `set`. Each is
sealed with the accounts key before it leaves the process (accounts/sealing.py). `new-key` is
the one command that prints key material, and the key it prints is a new one.

Input is read and checked before anything connects, so a bad argument or an unreadable secret
is exit code 2 with one line, as is a missing accounts key; a database problem is exit 1.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from chat4all_workers.cli.output import at_least, connect_postgres, out
from chat4all_workers.config import CHANNELS, Settings

if TYPE_CHECKING:
    import asyncpg

    from chat4all_workers.accounts.sealing import Keyring
    from chat4all_workers.db.accounts import AccountRow, AppRow

# The table's rules (migration 0003), checked here first for a one-line answer.
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)
_PROVIDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}", re.ASCII)
_MAX_PACE = 1e9
SECRETS_HELP = (
    "Secrets are read from the files named, else from standard input, one a line, in the order "
    "given (nothing is prompted when it is a pipe; on a terminal the input is hidden); never "
    "from the command line, never printed."
)


def add(commands: Any) -> None:
    accounts = commands.add_parser(
        "accounts",
        help="the sending accounts and Meta apps kept in the database (many senders)",
        description="The sending accounts (WhatsApp numbers, Instagram accounts) and Meta apps "
        "kept in PostgreSQL, their secrets sealed with the accounts key (ACCOUNTS_KEY or "
        "ACCOUNTS_KEY_FILE). Running workers pick every change up within moments. The "
        "environment's account of each channel is the `default` one and is not in the table. "
        + SECRETS_HELP,
    )
    actions = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    _add_account_parser(actions)
    app = actions.add_parser(
        "app-add",
        help="add a Meta app (its app secret and verify token); --update replaces them",
        description="Add a Meta app: its app secret (App settings > Basic), which signs its "
        "webhooks, and the verify token typed in its webhooks set-up. " + SECRETS_HELP,
    )
    app.add_argument("app_id", metavar="APP_ID", help="the app's id (1-64 of a-z 0-9 _ . -)")
    app.add_argument("--secret-file", metavar="PATH", help="a file holding the app secret")
    app.add_argument("--verify-token-file", metavar="PATH", help="a file holding the verify token")
    app.add_argument("--update", action="store_true", help="replace an existing app's secrets")
    listing = actions.add_parser(
        "list", help="the table's accounts and apps (never a secret: `set`)"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for name, what in (
        ("disable", "stop sending from an account (kept with its token: enable undoes it)"),
        ("enable", "send from a disabled account again"),
    ):
        _channel_and_key(actions.add_parser(name, help=what))
    rotate = actions.add_parser(
        "rotate-token",
        help="give an account a new token",
        description="Replace an account's token (a new version: the routers use it for the "
        "next send). " + SECRETS_HELP,
    )
    _channel_and_key(rotate)
    rotate.add_argument("--token-file", metavar="PATH", help="a file holding the token")
    new_key = actions.add_parser(
        "new-key",
        help="print a fresh accounts key line (ID:BASE64KEY) for ACCOUNTS_KEY",
        description="Print a new random AES-256 key as ACCOUNTS_KEY takes it. Put it first in "
        "ACCOUNTS_KEY (or the file of ACCOUNTS_KEY_FILE) to seal with it, keeping the older "
        "keys after it until every row is sealed again (docs/operations.md).",
    )
    new_key.add_argument(
        "--id",
        dest="key_id",
        metavar="ID",
        help="the key's id (1-32 of A-Z a-z 0-9 _ -; default k<today, UTC>)",
    )


def _add_account_parser(actions: Any) -> None:
    account = actions.add_parser(
        "add",
        help="add a sending account; --update redefines an existing one",
        description="Add a sending account: its channel and KEY (what messages name it by, "
        "`account`), the provider's id of the number or Instagram account, its Meta app, its "
        "token, and optionally its own pace (else the channel section's). " + SECRETS_HELP,
    )
    _channel_and_key(account)
    account.add_argument(
        "--provider-id",
        required=True,
        metavar="ID",
        help="WhatsApp phone number id / Instagram account id",
    )
    account.add_argument(
        "--app",
        dest="app_id",
        required=True,
        metavar="APP_ID",
        help="its Meta app (accounts app-add, or the environment's default-<channel>)",
    )
    account.add_argument(
        "--rate", type=_pace(float), metavar="N", help="sends per second (0: not paced)"
    )
    account.add_argument(
        "--pair-burst",
        type=at_least(0, int),
        metavar="N",
        help="per recipient: a burst of N (0: no pair limit)",
    )
    account.add_argument(
        "--pair-interval-s",
        type=_pace(float),
        metavar="S",
        help="per recipient: then one per S seconds",
    )
    account.add_argument("--token-file", metavar="PATH", help="a file holding the token")
    account.add_argument(
        "--update",
        action="store_true",
        help="redefine an existing account (a pace left out goes back to the channel's; "
        "the token is replaced; enabled or not stays)",
    )


def _channel_and_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("channel", choices=CHANNELS, metavar="CHANNEL", help=" or ".join(CHANNELS))
    parser.add_argument("key", metavar="KEY", help="the account's key (1-64 of a-z 0-9 _ . -)")


def _pace(kind: type[float]) -> Callable[[str], float]:
    parse = at_least(0, kind)

    def finite(text: str) -> float:
        value = float(parse(text))
        if value > _MAX_PACE:  # infinity too
            raise argparse.ArgumentTypeError(f"must be at most {_MAX_PACE:g}, got {text:.40}")
        return value

    return finite


class BadInputError(Exception):
    """What the operator gave cannot be used: one line, exit code 2."""


# -- the commands ----------------------------------------------------------------------------------


def add_account(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    try:
        _check_key(args.channel, args.key)
        _check(_PROVIDER_ID, args.provider_id, "--provider-id", "1-128 of A-Z a-z 0-9 _ . : -")
        _check(_KEY, args.app_id, "--app", "1-64 of a-z 0-9 _ . -")
        keyring = _keyring(settings)
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
        _check(_KEY, args.app_id, "APP_ID", "1-64 of a-z 0-9 _ . -")
        if args.app_id.startswith("default-"):
            raise BadInputError(
                f"{args.app_id} is the environment's app ({args.app_id.removeprefix('default-')}"
                " section): choose another id"
            )
        keyring = _keyring(settings)
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
            doc = {"accounts": [_account_doc(r) for r in rows], "apps": [_app_doc(a) for a in apps]}
            out(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _render(settings, rows, apps)
        return 0

    return _database("list", settings, show)


def set_enabled(settings: Settings, args: argparse.Namespace) -> int | Awaitable[int]:
    action: str = args.accounts_command
    try:
        _check_key(args.channel, args.key)
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
        _check_key(args.channel, args.key)
        keyring = _keyring(settings)
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


# -- what the commands share -----------------------------------------------------------------------


def _refuse(action: str, problem: str) -> int:
    sys.stderr.write(f"chat4all-workers accounts {action}: {problem}\n")
    return 2


def _check(pattern: re.Pattern[str], value: str, name: str, rule: str) -> None:
    if not pattern.fullmatch(value):
        raise BadInputError(f"{name}: expected {rule}, got {value!r:.70}")


def _check_key(channel: str, key: str) -> None:
    if key == "default":
        raise BadInputError(
            f"the default {channel} account is the environment's ([{channel}] section, "
            f"{channel.upper()}_*): the table holds the others; choose another KEY"
        )
    _check(_KEY, key, "KEY", "1-64 of a-z 0-9 _ . -, starting with a letter or digit")


def _keyring(settings: Settings) -> Keyring:
    from chat4all_workers.accounts.keys import NO_KEY_HINT, load_keyring

    keyring = load_keyring(settings)  # ConfigError for a bad one: exit 2 too
    if keyring is None:
        raise BadInputError(f"no accounts key to seal with: {NO_KEY_HINT}")
    return keyring


def read_secrets(sources: Sequence[tuple[str, str | None]], *, what: str) -> list[str]:
    """Each secret from its file, or (those without one, in order) from standard input, one a
    line; checked, never quoted."""
    from_stdin = [name for name, path in sources if path is None]
    lines = _stdin_lines(from_stdin, what) if from_stdin else []
    values: list[str] = []
    for name, path in sources:
        text = _read_file(name, path) if path is not None else lines.pop(0)
        values.append(_checked(name, text, "its file" if path else "standard input"))
    return values


def _stdin_lines(names: Sequence[str], what: str) -> list[str]:
    if sys.stdin is None:
        raise BadInputError(f"no standard input to read the {' and '.join(names)} from")
    if sys.stdin.isatty():
        return [getpass.getpass(f"{name} for {what} (hidden): ") for name in names]
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if len(lines) != len(names):
        wanted = " then ".join(names)
        raise BadInputError(
            f"standard input holds {len(lines)} non-empty lines; expected {len(names)}: {wanted}"
        )
    return lines


def _read_file(name: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"the {name} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"the {name} file {path} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        raise BadInputError(f"the {name} file {path} holds {len(lines)} lines; expected one")
    return text


def _checked(name: str, text: str, where: str) -> str:
    value = text.strip()
    if not value:
        raise BadInputError(f"the {name} from {where} is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise BadInputError(f"the {name} from {where} holds spaces or control characters")
    return value


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


def _account_doc(row: AccountRow) -> dict[str, Any]:
    return {
        "channel": row.channel,
        "key": row.key,
        "provider_id": row.provider_id,
        "app_id": row.app_id,
        "max_rate_per_s": row.max_rate_per_s,  # null: the channel's
        "pair_burst": row.pair_burst,
        "pair_interval_s": row.pair_interval_s,
        "enabled": row.enabled,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "token": "set",
    }


def _app_doc(row: AppRow) -> dict[str, Any]:
    return {
        "app_id": row.app_id,
        "secret": "set",
        "verify_token": "set",
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def _render(settings: Settings, rows: Sequence[AccountRow], apps: Sequence[AppRow]) -> None:
    header = ("CHANNEL", "KEY", "PROVIDER ID", "APP", "RATE/S", "PAIR", "ENABLED", "VERSION")
    table = [
        (
            row.channel,
            row.key,
            row.provider_id,
            row.app_id,
            *_paces(settings, row),
            "yes" if row.enabled else "no",
            str(row.version),
        )
        for row in rows
    ]
    _table(
        [(*header, "UPDATED", "TOKEN")],
        [(*r, _when(row.updated_at), "set") for r, row in zip(table, rows, strict=True)],
    )
    out("\n")
    _table(
        [("APP", "SECRET", "VERIFY TOKEN", "UPDATED")],
        [(app.app_id, "set", "set", _when(app.updated_at)) for app in apps],
    )


def _paces(settings: Settings, row: AccountRow) -> tuple[str, str]:
    section = getattr(settings, row.channel)
    rate = (
        f"{row.max_rate_per_s:g}"
        if row.max_rate_per_s is not None
        else (f"{section.max_rate_per_s:g} (default)")
    )
    burst = section.pair_burst if row.pair_burst is None else row.pair_burst
    interval = section.pair_interval_s if row.pair_interval_s is None else row.pair_interval_s
    pair = "off" if burst == 0 else f"{burst}, then 1/{interval:g}s"
    if row.pair_burst is None and row.pair_interval_s is None:
        pair += " (default)"
    return rate, pair


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> None:
    lines = [*header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        out(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            + "\n"
        )
