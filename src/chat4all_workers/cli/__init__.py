"""`chat4all-workers`: argv, logging, signal handlers and `asyncio.run` live in this package alone.

Exit codes: 0 success (a SIGTERM included, even while start-up still waits for a dependency), 1 a
runtime failure (a permanent role failed, a dependency unreachable or refusing our credentials),
2 bad usage or configuration (one line naming the key and its source, or the argument), 141 when
the reader of stdout went away (`config show | head`), as for any Unix tool killed by SIGPIPE.
Every error a user can cause is one line on stderr, never a traceback.

Each command imports what it runs when it runs: the supervisor, the roles, `status`, the Kafka,
PostgreSQL, Redis and S3 clients cost about half a second of CPU to import, which `roles`,
`--help` or a usage error would pay for nothing (and the tests run this CLI as a process many
times). Only what every command needs (argparse, config, logging, the registry) is imported at
the top; the rest inside the function of the command that uses it, with the names that only
annotate imported under TYPE_CHECKING. A role is imported for its own settings section only by
the commands that read it (`run`, `run-once`, `config show`: load_settings).

The package: this module reads argv and the settings and dispatches; `output.py` holds what every
command shares (the one-line usage error, stdout that knows a closed pipe); one module per group
of commands: `running.py` (run, run-once, the signal handlers), `admin.py` (roles, config, db,
topics, status, dlq), `messages.py` (send, message), `accounts/` (accounts: the sending
accounts and Meta apps in the database).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from chat4all_workers import roles
from chat4all_workers.cli import admin, messages, running
from chat4all_workers.cli.accounts import actions as account_actions
from chat4all_workers.cli.accounts import parsers as account_parsers
from chat4all_workers.cli.output import (
    EXIT_STDOUT_CLOSED,
    Parser,
    StdoutClosedError,
    flush_stdout,
)
from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError, DependencyRefusedError, PortUnavailableError
from chat4all_workers.observability.console import LOG_FORMATS, choose_formatter
from chat4all_workers.observability.logging import configure_logging
from chat4all_workers.roles import check_role_keys

log = logging.getLogger("chat4all_workers.cli")

Handler = Callable[[Settings, argparse.Namespace], int | Awaitable[int]]
# The command (and its action, for a command of several) -> what runs it.
COMMANDS: dict[str, Handler] = {
    "run": running.run,
    "run-once": running.run_once,
    "roles": admin.list_roles,
    "config": admin.show_config,
    "db": admin.migrate,
    "topics": admin.ensure_topics,
    "status": admin.status,
    "dlq": admin.replay,
    "send": messages.send_message,
    "message": messages.show_message,
    "accounts add": account_actions.add_account,
    "accounts app-add": account_actions.add_app,
    "accounts list": account_actions.list_accounts,
    "accounts disable": account_actions.set_enabled,
    "accounts enable": account_actions.set_enabled,
    "accounts rotate-token": account_actions.rotate_token,
    "accounts new-key": account_actions.new_key,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="chat4all-workers",
        description="Run the Chat4All background workers, supervised in one asyncio event loop.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="supervisor.toml to read (default: $CHAT4ALL_CONFIG, else ./supervisor.toml)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="log lines on stderr: text (readable), json (the contract's), or auto: text on a "
        "terminal, JSON otherwise (default: $CHAT4ALL_OBSERVABILITY_LOG_FORMAT, else the file's)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    running.add(commands)
    admin.add(commands)
    messages.add(commands)
    account_parsers.add(commands)
    return parser


def load_settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """The settings a command needs: the shared sections, and the own sections of the roles it
    runs (`run`: the enabled ones; `run-once`: its one; `config show`: every role's), each role
    imported only when its section is read."""
    overrides: dict[str, tuple[str, str]] = {}
    if getattr(args, "roles", None):
        overrides["roles.enabled"] = (args.roles, "--roles")
    if getattr(args, "log_format", None):
        overrides["observability.log_format"] = (args.log_format, "--log-format")
    path = args.config or environ.get("CHAT4ALL_CONFIG")
    default = Path(Settings.DEFAULT_PATH)
    toml = Path(path) if path is not None else default if default.exists() else None
    match args.command:
        case "run":
            return roles.load_settings_for_enabled(environ, toml, overrides=overrides)
        case "run-once":
            known = args.role if args.role in roles.CATALOGUE else None
            return roles.load_settings(
                environ, toml, overrides=overrides, roles=[known] if known else ()
            )
        case "config":
            return roles.load_settings(environ, toml, overrides=overrides)
        case "send" | "message":  # what `all` expands to is the router's
            return roles.load_settings(environ, toml, overrides=overrides, roles=["router"])
    return roles.load_settings(environ, toml, overrides=overrides, roles=())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = load_settings(args, environ)
        check_role_keys(settings)  # keys name roles: the registry is known only up here
        configure_logging(
            level=settings.observability.log_level,
            service="supervisor",
            repeat_interval_s=settings.observability.log_repeat_interval_s,
            formatter=choose_formatter(
                settings.observability.log_format,
                stream=sys.stderr,
                default_service="supervisor",
                no_color=bool(environ.get("NO_COLOR")),
                term=environ.get("TERM", ""),
            ),
        )
        code = _dispatch(args, settings)
        flush_stdout()
        return code
    except ConfigError as exc:
        sys.stderr.write(f"chat4all-workers: configuration error: {exc}\n")
        return 2
    except StdoutClosedError:
        # Point stdout at /dev/null: the interpreter flushes it once more on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    action = getattr(args, f"{args.command}_command", None)
    handler = COMMANDS.get(f"{args.command} {action}") or COMMANDS[args.command]
    outcome = handler(settings, args)
    if isinstance(outcome, int):
        return outcome
    return _run_async(outcome)


def _run_async(work: Awaitable[int]) -> int:
    async def main() -> int:
        return await work

    try:
        return asyncio.run(main())
    except (DependencyRefusedError, PortUnavailableError) as exc:
        log.error("%s", exc)
        return 1
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        return 1
