"""What every command shares: the one-line usage error, stdout that knows a closed pipe, and the
argument types and connections more than one command uses."""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from chat4all_workers.config import Settings
from chat4all_workers.errors import DependencyRefusedError

# 128 + SIGPIPE: what a shell reports for a tool whose reader closed the pipe.
EXIT_STDOUT_CLOSED = 141


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on ONE line (exit 2) like every other bad input; subcommand
    parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class StdoutClosedError(Exception):
    """Whoever read our stdout went away (`config show | head`): not an error of ours."""


def out(text: str) -> None:
    """Every command's stdout goes through here, so a closed pipe is told apart from a closed
    socket (both are BrokenPipeError)."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise StdoutClosedError from None


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosedError from None


def count(low: int, default: int | None = None) -> dict[str, Any]:
    """An option's keywords for a whole number of at least `low` (shown as N)."""
    return {"type": at_least(low, int), "default": default, "metavar": "N"}


def seconds(low: float, default: float | None = None) -> dict[str, Any]:
    """An option's keywords for a number of seconds of at least `low` (shown as S)."""
    return {"type": at_least(low, float), "default": default, "metavar": "S"}


def add_workers(
    parser: argparse.ArgumentParser, what: str, *, empty_reads_none: bool = False
) -> None:
    """`--workers URLS`: `what` the operations ports are read for, then the default (this host's,
    as `workers` takes it; `empty_reads_none`: the help says '' reads none)."""
    default = "http://127.0.0.1:$METRICS_PORT" + ("; '' for none" if empty_reads_none else "")
    parser.add_argument("--workers", metavar="URLS", help=f"{what} (default: {default})")


def at_least(low: int | float, kind: type[int] | type[float]) -> Any:
    """An argparse type: a number of `kind`, at least `low`."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r:.40}") from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text:.40}")
        return value

    return parse


def uuid_arg(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r:.60}") from None


def since_arg(text: str) -> datetime:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601, or 30m, 2h, 1d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def workers(settings: Settings, urls: str | None) -> list[str]:
    """The operations ports a command reads (`--workers`; default: this host's)."""
    default = f"http://127.0.0.1:{settings.observability.metrics_port}"
    return [u.strip() for u in (default if urls is None else urls).split(",") if u.strip()]


async def connect_postgres(settings: Settings) -> Any:
    """One connection for a command; a refusal (wrong password, no database) is final, and an
    unreachable server is named with its address (the driver's own error names neither:
    "[Errno 111] Connect call failed ('127.0.0.1', 5432)")."""
    import asyncpg

    from chat4all_workers.config_checks import masked_url
    from chat4all_workers.resources import REFUSAL_ERRORS, refusal

    url = settings.postgres.url.get()
    try:
        return await asyncpg.connect(url, timeout=10)
    except REFUSAL_ERRORS as exc:
        raise DependencyRefusedError("postgres", refusal(exc) or type(exc).__name__) from None
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError) as exc:
        error = str(exc) or type(exc).__name__
        where = masked_url(url) or "postgres.url"
        raise ConnectionError(f"postgres: unreachable at {where}: {error}") from None
