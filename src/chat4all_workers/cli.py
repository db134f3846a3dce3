"""`chat4all-workers`: argv, logging set-up, signal handlers and `asyncio.run` live here alone.

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
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from chat4all_workers import roles
from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError, DependencyRefusedError, RoleFailedError
from chat4all_workers.observability.console import LOG_FORMATS, choose_formatter
from chat4all_workers.observability.logging import configure_logging
from chat4all_workers.roles import CATALOGUE, check_role_keys, resolve_names

if TYPE_CHECKING:
    from chat4all_workers.app import App
    from chat4all_workers.kafka.records import ConsumedRecord
    from chat4all_workers.kafka.replay import ReplaySummary
    from chat4all_workers.ops.follow import StatusEvent

log = logging.getLogger("chat4all_workers.cli")
# 128 + SIGPIPE: what a shell reports for a tool whose reader closed the pipe.
EXIT_STDOUT_CLOSED = 141


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on ONE line (exit 2) like every other bad input; subcommand
    parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


class _StdoutClosedError(Exception):
    """Whoever read our stdout went away (`config show | head`): not an error of ours."""


def _out(text: str) -> None:
    """Every command's stdout goes through here, so a closed pipe is told apart from a closed
    socket (both are BrokenPipeError)."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise _StdoutClosedError from None


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosedError from None


def _at_least(low: int | float, kind: type[int] | type[float]) -> Any:
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    run = commands.add_parser("run", help="run the enabled roles until SIGTERM/SIGINT")
    run.add_argument(
        "--roles",
        metavar="LIST",
        help="comma-separated roles, or 'all' (default: $ROLES, else [roles] enabled in the file)",
    )

    once = commands.add_parser("run-once", help="run one pass of a periodic role and exit 0/1")
    once.add_argument("role", help="a periodic role, e.g. gc")

    commands.add_parser("roles", help="list the roles, what each does, and whether it is enabled")

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="every setting, its value and where it came from (secrets masked)"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("migrate", help="apply the bundled SQL migrations (idempotent)")

    status = commands.add_parser(
        "status", help="lag, outbox, fallback queue, DLQ, stuck files, workers; exit 1 if unhealthy"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--workers",
        metavar="URLS",
        help="comma-separated base URLs of workers' operations ports "
        "(default: http://127.0.0.1:$METRICS_PORT)",
    )
    status.add_argument(
        "--max-lag",
        type=_at_least(0, int),
        default=10_000,
        metavar="N",
        help="lag above this per group and topic is unhealthy (default 10000)",
    )
    status.add_argument(
        "--max-outbox-age-s",
        type=_at_least(0, float),
        default=300.0,
        metavar="S",
        help="an unpublished outbox event older than this is unhealthy (300)",
    )

    dlq = commands.add_parser("dlq", help="dead-letter queue tools")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    replay = dlq_commands.add_parser(
        "replay", help="re-publish DLQ records to their original topic (not repeated next time)"
    )
    replay.add_argument(
        "--limit", type=_at_least(1, int), metavar="N", help="replay at most N records (N >= 1)"
    )
    replay.add_argument(
        "--since",
        type=_parse_since,
        metavar="T",
        help="only records dead-lettered since T (ISO 8601, or 30m, 2h, 1d ago)",
    )
    replay.add_argument("--reason", metavar="TEXT", help="only records whose reason contains TEXT")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")

    topics = commands.add_parser("topics", help="Kafka topic administration")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    topic_commands.add_parser("ensure", help="create the platform's topics if missing (idempotent)")
    _add_send(commands)
    _add_message(commands)
    return parser


def _add_send(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        help="write a message as the platform's API does (its row and outbox event, one "
        "transaction) and print its id; --wait follows it to READ",
        description="Write a message as the platform's API does: the messages row and its "
        "message.created outbox event in one transaction. Prints the message id. With --wait, "
        "one line per status (time, channel, status, provider id) until every channel is READ "
        "(exit 0) or FAILED, or the timeout (exit 1, with the reason).",
    )
    content = send.add_mutually_exclusive_group(required=True)
    content.add_argument("--text", metavar="TEXT", help="a text message")
    content.add_argument(
        "--file-id", type=_uuid, metavar="UUID", help="a COMPLETED file of the files table"
    )
    send.add_argument("--caption", metavar="TEXT", help="the file's caption (with --file-id)")
    send.add_argument(
        "--channel",
        "--channels",
        dest="channels",
        action="append",
        default=[],
        metavar="NAME",
        help="whatsapp, instagram or all; repeat it or separate with commas (default: all)",
    )
    send.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="CHANNEL=RECIPIENT",
        help="e.g. --to whatsapp=+5511999990000 --to instagram=17841400000000000 (default: "
        "demo recipients, only for a channel whose API is a local mock, as with make run)",
    )
    send.add_argument(
        "--conversation-id",
        type=_at_least(1, int),
        metavar="N",
        help="the conversation (default: a fresh one)",
    )
    send.add_argument("--sender-id", type=_at_least(1, int), metavar="N", help="the sender")
    send.add_argument(
        "--wait", action="store_true", help="follow it until READ or FAILED on every channel"
    )
    send.add_argument(
        "--timeout",
        type=_at_least(0.1, float),
        default=60.0,
        metavar="S",
        help="with --wait: give up after S seconds, exit 1 (default 60)",
    )
    send.add_argument(
        "--workers",
        metavar="URLS",
        help="with --wait: operations ports read for a paused channel "
        "(default: http://127.0.0.1:$METRICS_PORT)",
    )
    send.add_argument("--json", action="store_true", help="one JSON document at the end")


def _add_message(commands: Any) -> None:
    message = commands.add_parser(
        "message",
        help="all that is known about one message: row, status history, dedup markers, DLQ "
        "records, outbox event (read-only); exit 1 if none knows it",
        description="All that is known about one message, read-only: its messages row, its "
        "status history, per channel its dedup marker (sent, failed, leased, in doubt), the "
        "Instagram provider index, its DLQ records and its outbox event. The DLQ is not "
        "scanned: only the partition its conversation's key hashes to is read, from the "
        "message's creation time (less 5 minutes) to the partition's end, at most "
        "--dlq-limit records.",
    )
    message.add_argument("message_id", type=_uuid, metavar="ID", help="the message id (UUID)")
    message.add_argument(
        "--dlq-limit",
        type=_at_least(1, int),
        default=10_000,
        metavar="N",
        help="read at most N records of the DLQ partition (default 10000)",
    )
    message.add_argument(
        "--workers",
        metavar="URLS",
        help="operations ports read for the router's state of a channel not sent yet "
        "(default: http://127.0.0.1:$METRICS_PORT; '' for none)",
    )
    message.add_argument("--json", action="store_true", help="one JSON document")


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r:.60}") from None


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
        _flush_stdout()
        return code
    except ConfigError as exc:
        sys.stderr.write(f"chat4all-workers: configuration error: {exc}\n")
        return 2
    except _StdoutClosedError:
        # Point stdout at /dev/null: the interpreter flushes it once more on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "run":
            from chat4all_workers.observability.tracing import configure_tracing

            names = resolve_names(
                settings.roles.enabled, source=settings.sources.get("roles.enabled", "default")
            )
            configure_tracing(
                service_name=settings.observability.service_name,
                otlp_endpoint=settings.observability.otlp_endpoint,
            )
            return _run_async(_run(settings, names))
        case "run-once":
            return _run_async(_run_once(settings, args.role))
        case "roles":
            enabled = set(resolve_names(settings.roles.enabled))
            width = max(len(n) for n in CATALOGUE)
            for name, entry in CATALOGUE.items():
                mark = "enabled " if name in enabled else "disabled"
                kind = "periodic" if entry.periodic else "service"
                _out(f"{name:<{width}}  {mark}  {kind:<8}  {entry.description}\n")
            return 0
        case "config":
            _show_config(settings, as_json=args.json)
            return 0
        case "db":
            return _run_async(_migrate(settings))
        case "topics":
            return _run_async(_ensure_topics(settings))
        case "status":
            return _run_async(_status(settings, args))
        case "dlq":
            return _run_async(_replay(settings, args))
        case "send":
            return _run_async(_send(settings, args))
        case "message":
            return _run_async(_message(settings, args))
    raise AssertionError(f"unhandled command {args.command}")


def _show_config(settings: Settings, *, as_json: bool) -> None:
    """Each key once, with its value (a secret masked: a URL keeps all but its password), where
    the value came from, and the environment name that would set it."""
    rows = settings.describe()
    if as_json:
        doc = {r.key: {"value": r.data, "source": r.source, "env": r.env} for r in rows}
        _out(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    width = max(len(row.key) for row in rows)
    for row in rows:
        where = row.source if row.source == f"env {row.env}" else f"{row.source}; env {row.env}"
        _out(f"{row.key:<{width}} = {row.value}    # {where}\n")


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except DependencyRefusedError as exc:
        log.error("%s", exc)
        return 1
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        return 1


async def _run(settings: Settings, roles: list[str]) -> int:
    """Run until a signal; a signal while start-up still waits for a dependency ends it too, with
    exit code 0 (an orchestrator stopping a pod that never became ready is not a failure)."""
    from chat4all_workers.app import App

    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    assert starting is not None
    running: App | None = None
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen > 1:
            log.warning("second signal; exiting without draining")
            os._exit(1)
        if running is None:
            log.info("received %s during start-up; stopping", name)
            starting.cancel()
        else:
            log.info("received %s; draining (send again to force exit)", name)
            running.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with App(settings, roles=roles) as app:
            running = app
            log.info("running roles %s; operations on port %s", ",".join(roles), app.http_port)
            try:
                await app.wait()
            except RoleFailedError as exc:
                log.critical("%s", exc)
                return 1
    except asyncio.CancelledError:
        if running is not None or not signals_seen:
            raise
        starting.uncancel()
        log.info("stopped before start-up finished")
        return 0
    log.info("stopped cleanly")
    return 0


async def _run_once(settings: Settings, role: str) -> int:
    from chat4all_workers.app import run_once

    try:
        await run_once(settings, role)
    except (ConfigError, DependencyRefusedError):
        raise
    except Exception:
        log.exception("run-once %s failed", role)
        return 1
    return 0


async def _migrate(settings: Settings) -> int:
    import asyncpg

    from chat4all_workers.db.migrate import migrate
    from chat4all_workers.resources import REFUSAL_ERRORS, refusal

    try:
        conn = await asyncpg.connect(settings.postgres.url.get())
    except REFUSAL_ERRORS as exc:
        raise DependencyRefusedError("postgres", refusal(exc) or type(exc).__name__) from None
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    _out(f"applied: {', '.join(applied)}\n" if applied else "database is up to date\n")
    return 0


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.status import Thresholds, collect_status
    from chat4all_workers.status import render as render_status

    default = f"http://127.0.0.1:{settings.observability.metrics_port}"
    workers = [u.strip() for u in (args.workers or default).split(",") if u.strip()]
    thresholds = Thresholds(max_lag=args.max_lag, max_outbox_age_s=args.max_outbox_age_s)
    report = await collect_status(settings, workers=workers, thresholds=thresholds)
    if args.json:
        _out(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_status(report, write=_out)
    return 0 if report.healthy else 1


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.kafka.replay import ReplayFilter, replay_dlq

    def progress(summary: ReplaySummary, record: ConsumedRecord, outcome: str) -> None:
        reason = (record.header("dlq.reason") or "")[:80]
        _out(f"[{summary.examined}] {record.partition}@{record.offset} {outcome}  ({reason})\n")

    filters = ReplayFilter(limit=args.limit, since=args.since, reason=args.reason)
    summary = await replay_dlq(settings, filters=filters, dry_run=args.dry_run, progress=progress)
    verb = "would replay" if args.dry_run else "replayed"
    topics = ", ".join(f"{t}: {n}" for t, n in sorted(summary.by_topic.items())) or "none"
    _out(
        f"{verb} {summary.replayed} of {summary.examined} examined ({topics}); "
        f"{summary.skipped} left by the filters, {summary.unreplayable} without an original topic\n"
    )
    return 0


def _parse_since(text: str) -> datetime:
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


async def _ensure_topics(settings: Settings) -> int:
    from chat4all_workers.kafka.admin import ensure_topics

    created, present = await ensure_topics(settings)
    for name in created:
        _out(f"created {name}\n")
    for name in present:
        _out(f"exists  {name}\n")
    return 0


def _workers(settings: Settings, urls: str | None) -> list[str]:
    default = f"http://127.0.0.1:{settings.observability.metrics_port}"
    return [u.strip() for u in (default if urls is None else urls).split(",") if u.strip()]


async def _send(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from chat4all_workers.ops import follow, send

    try:
        message = send.compose(
            settings,
            text=args.text,
            file_id=args.file_id,
            caption=args.caption,
            channels=args.channels,
            to=args.to,
            conversation_id=args.conversation_id,
            sender_id=args.sender_id,
        )
        conn = await _connect_postgres(settings)
        try:
            written = await send.write(conn, message)
            doc = dict(send.describe(written))
            if not args.json:
                _out(f"{message.message_id}\n")
            if not args.wait:
                if args.json:
                    _out(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
                return 0
            if not args.json:
                to = ", ".join(f"{c} {r}" for c, r in message.recipients.items())
                _out(
                    f"following it to READ on {to} (conversation {message.conversation_id}; "
                    f"up to {args.timeout:g} s)\n"
                )

            def on_status(event: StatusEvent) -> None:
                if not args.json:
                    _out(follow.status_line(event) + "\n")
                    _flush_stdout()

            def on_notice(text: str) -> None:
                if not args.json:
                    _out(f"  {text}\n")
                    _flush_stdout()

            result = await follow.follow(
                settings,
                conn,
                message_id=message.message_id,
                conversation_id=message.conversation_id,
                channels=message.channels,
                event_id=written.event_id,
                timeout_s=args.timeout,
                workers=_workers(settings, args.workers),
                on_status=on_status,
                on_notice=on_notice,
            )
        finally:
            await conn.close()
    except send.BadInputError as exc:
        sys.stderr.write(f"chat4all-workers send: {exc}\n")
        return 2
    except asyncpg.PostgresError as exc:  # e.g. a database without the migrations
        sys.stderr.write(f"chat4all-workers send: postgres: {exc}\n")
        return 1
    if args.json:
        _out(orjson.dumps({**doc, **result.as_dict()}, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif result.outcome == "read":
        _out(f"{result.reason} in {result.elapsed_s:.1f} s\n")
    elif result.outcome == "failed":
        _out(f"{result.reason}\n")
    else:
        _out(f"timed out after {args.timeout:g} s: {result.reason}\n")
    return 0 if result.outcome == "read" else 1


async def _connect_postgres(settings: Settings) -> Any:
    import asyncpg

    from chat4all_workers.resources import REFUSAL_ERRORS, refusal

    try:
        return await asyncpg.connect(settings.postgres.url.get(), timeout=10)
    except REFUSAL_ERRORS as exc:
        raise DependencyRefusedError("postgres", refusal(exc) or type(exc).__name__) from None


async def _message(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.ops.story import collect_story
    from chat4all_workers.ops.story_text import render as render_story

    story = await collect_story(
        settings,
        args.message_id,
        dlq_limit=args.dlq_limit,
        workers=_workers(settings, args.workers),
    )
    if args.json:
        doc = story.as_dict()
        _out(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
    else:
        render_story(story, write=_out)
    return 0 if story.found else 1
