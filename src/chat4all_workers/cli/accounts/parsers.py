"""The arguments of `chat4all-workers accounts` and of each of its actions."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from chat4all_workers.cli.accounts.inputs import SECRETS_HELP
from chat4all_workers.cli.output import at_least, count
from chat4all_workers.config import CHANNELS

_MAX_PACE = 1e9


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
    _refuse_on_the_command_line(app, "--secret", "--app-secret", "--verify-token")
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
    _refuse_on_the_command_line(rotate, "--token")
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
        **count(0),
        help="per recipient: a burst of N (0: no pair limit)",
    )
    account.add_argument(
        "--pair-interval-s",
        type=_pace(float),
        metavar="S",
        help="per recipient: then one per S seconds",
    )
    account.add_argument("--token-file", metavar="PATH", help="a file holding the token")
    _refuse_on_the_command_line(account, "--token")
    account.add_argument(
        "--update",
        action="store_true",
        help="redefine an existing account (a pace left out goes back to the channel's; "
        "the token is replaced; enabled or not stays)",
    )


class _SecretOnTheCommandLine(argparse.Action):
    """A secret given as an argument: refused without repeating it. Without this option,
    argparse would take `--token SECRET` for `--token-file SECRET` (an abbreviation) and
    print the secret as a missing file's name."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string or self.option_strings[0]} is not taken: a secret on the command "
            "line stays in the shell's history and in `ps`; give it on standard input or in a file"
        )


def _refuse_on_the_command_line(parser: argparse.ArgumentParser, *names: str) -> None:
    parser.add_argument(*names, action=_SecretOnTheCommandLine, help=argparse.SUPPRESS)


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
