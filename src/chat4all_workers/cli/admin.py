"""The operator's read and repair commands: `roles`, `config show`, `db migrate`, `topics
ensure`, `status`, `dlq replay`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import orjson

from chat4all_workers.cli.output import (
    add_workers,
    connect_postgres,
    count,
    out,
    seconds,
    since_arg,
    workers,
)
from chat4all_workers.config import Settings
from chat4all_workers.roles import CATALOGUE, resolve_names

if TYPE_CHECKING:
    from chat4all_workers.kafka.records import ConsumedRecord
    from chat4all_workers.kafka.replay import ReplaySummary


def add(commands: Any) -> None:
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

    _add_status(commands)
    _add_dlq(commands)

    topics = commands.add_parser("topics", help="Kafka topic administration")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    topic_commands.add_parser("ensure", help="create the platform's topics if missing (idempotent)")


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="lag, outbox, fallback queue, DLQ, stuck files, workers; exit 1 if unhealthy"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    add_workers(status, "comma-separated base URLs of workers' operations ports")
    status.add_argument(
        "--max-lag",
        **count(0, 10_000),
        help="lag above this per group and topic is unhealthy (default 10000)",
    )
    status.add_argument(
        "--max-outbox-age-s",
        **seconds(0, 300.0),
        help="an unpublished outbox event older than this is unhealthy (300)",
    )


def _add_dlq(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="dead-letter queue tools")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    replay = dlq_commands.add_parser(
        "replay", help="re-publish DLQ records to their original topic (not repeated next time)"
    )
    replay.add_argument("--limit", **count(1), help="replay at most N records (N >= 1)")
    replay.add_argument(
        "--since",
        type=since_arg,
        metavar="T",
        help="only records dead-lettered since T (ISO 8601, or 30m, 2h, 1d ago)",
    )
    replay.add_argument("--reason", metavar="TEXT", help="only records whose reason contains TEXT")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")


def list_roles(settings: Settings, args: argparse.Namespace) -> int:
    enabled = set(resolve_names(settings.roles.enabled))
    width = max(len(n) for n in CATALOGUE)
    for name, entry in CATALOGUE.items():
        mark = "enabled " if name in enabled else "disabled"
        kind = "periodic" if entry.periodic else "service"
        out(f"{name:<{width}}  {mark}  {kind:<8}  {entry.description}\n")
    return 0


def show_config(settings: Settings, args: argparse.Namespace) -> int:
    """Each key once, with its value (a secret masked: a URL keeps all but its password), where
    the value came from, and the environment name that would set it."""
    rows = settings.describe()
    if args.json:
        doc = {r.key: {"value": r.data, "source": r.source, "env": r.env} for r in rows}
        out(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    width = max(len(row.key) for row in rows)
    for row in rows:
        where = row.source if row.source == f"env {row.env}" else f"{row.source}; env {row.env}"
        out(f"{row.key:<{width}} = {row.value}    # {where}\n")
    return 0


async def migrate(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.db.migrate import migrate as apply_migrations

    conn = await connect_postgres(settings)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    out(f"applied: {', '.join(applied)}\n" if applied else "database is up to date\n")
    return 0


async def status(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.status import Thresholds, collect_status
    from chat4all_workers.status import render as render_status

    thresholds = Thresholds(max_lag=args.max_lag, max_outbox_age_s=args.max_outbox_age_s)
    report = await collect_status(
        settings, workers=workers(settings, args.workers), thresholds=thresholds
    )
    if args.json:
        out(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_status(report, write=out)
    return 0 if report.healthy else 1


async def replay(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.kafka.replay import ReplayFilter, replay_dlq

    def progress(summary: ReplaySummary, record: ConsumedRecord, outcome: str) -> None:
        reason = (record.header("dlq.reason") or "")[:80]
        out(f"[{summary.examined}] {record.partition}@{record.offset} {outcome}  ({reason})\n")

    filters = ReplayFilter(limit=args.limit, since=args.since, reason=args.reason)
    summary = await replay_dlq(settings, filters=filters, dry_run=args.dry_run, progress=progress)
    verb = "would replay" if args.dry_run else "replayed"
    topics = ", ".join(f"{t}: {n}" for t, n in sorted(summary.by_topic.items())) or "none"
    out(
        f"{verb} {summary.replayed} of {summary.examined} examined ({topics}); "
        f"{summary.skipped} left by the filters, {summary.unreplayable} without an original topic\n"
    )
    return 0


async def ensure_topics(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.kafka.admin import ensure_topics as ensure

    created, present = await ensure(settings)
    for name in created:
        out(f"created {name}\n")
    for name in present:
        out(f"exists  {name}\n")
    return 0
