"""`chat4all-workers`: argv, logging set-up, signal handlers and `asyncio.run` live here alone.

Exit codes: 0 success, 1 a runtime failure (a permanent role failed, a dependency unreachable),
2 bad usage or configuration (a one-line message naming the key and its source).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.errors import ConfigError, RoleFailedError
from chat4all_workers.kafka.admin import ensure_topics
from chat4all_workers.observability.logging import configure_logging
from chat4all_workers.observability.tracing import configure_tracing
from chat4all_workers.roles import REGISTRY
from chat4all_workers.supervisor import Supervisor, resolve_roles, run_once

log = logging.getLogger("chat4all_workers.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat4all-workers",
        description="Run the Chat4All background workers, supervised in one asyncio event loop.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="supervisor.toml to read (default: $CHAT4ALL_CONFIG, else ./supervisor.toml)",
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
    config_commands.add_parser("show", help="every setting, its value and where it came from")

    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("migrate", help="apply the bundled SQL migrations (idempotent)")

    topics = commands.add_parser("topics", help="Kafka topic administration")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    topic_commands.add_parser("ensure", help="create the platform's topics if missing (idempotent)")
    return parser


def load_settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    overrides: dict[str, tuple[str, str]] = {}
    if getattr(args, "roles", None):
        overrides["roles.enabled"] = (args.roles, "--roles")
    path = args.config or environ.get("CHAT4ALL_CONFIG")
    if path is None:
        default = Path(Settings.DEFAULT_PATH)
        return Settings.load(environ, default if default.exists() else None, overrides=overrides)
    return Settings.load(environ, Path(path), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        settings = load_settings(args, environ)
        configure_logging(level=settings.observability.log_level, service="supervisor")
        return _dispatch(args, settings)
    except ConfigError as exc:
        sys.stderr.write(f"chat4all-workers: configuration error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "run":
            specs = resolve_roles(
                settings.roles.enabled, source=settings.sources.get("roles.enabled", "default")
            )
            configure_tracing(
                service_name=settings.observability.service_name,
                otlp_endpoint=settings.observability.otlp_endpoint,
            )
            return _run_async(_run(settings, [s.name for s in specs]))
        case "run-once":
            return _run_async(_run_once(settings, args.role))
        case "roles":
            enabled = {s.name for s in resolve_roles(settings.roles.enabled)}
            width = max(len(n) for n in REGISTRY)
            for name, spec in REGISTRY.items():
                mark = "enabled " if name in enabled else "disabled"
                kind = "periodic" if spec.run_once else "service"
                sys.stdout.write(f"{name:<{width}}  {mark}  {kind:<8}  {spec.description}\n")
            return 0
        case "config":
            rows = settings.describe()
            width = max(len(row.key) for row in rows)
            for row in rows:
                line = f"{row.key:<{width}} = {row.value}    # {row.source}; env {row.env}"
                sys.stdout.write(line + "\n")
            return 0
        case "db":
            return _run_async(_migrate(settings))
        case "topics":
            return _run_async(_ensure_topics(settings))
    raise AssertionError(f"unhandled command {args.command}")


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except (ConnectionError, OSError) as exc:
        log.error("%s", exc)
        return 1


async def _run(settings: Settings, roles: list[str]) -> int:
    loop = asyncio.get_running_loop()
    async with Supervisor(settings, roles=roles) as sup:
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info(
                    "received %s; draining (send again to force exit)", signal.Signals(signum).name
                )
                sup.request_stop()
            else:
                log.warning("second signal; exiting without draining")
                os._exit(1)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        log.info("running roles %s; operations on port %s", ",".join(roles), sup.http_port)
        try:
            await sup.wait()
        except RoleFailedError as exc:
            log.critical("%s", exc)
            return 1
    log.info("stopped cleanly")
    return 0


async def _run_once(settings: Settings, role: str) -> int:
    try:
        await run_once(settings, role)
    except ConfigError:
        raise
    except Exception:
        log.exception("run-once %s failed", role)
        return 1
    return 0


async def _migrate(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.postgres.url.get())
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    sys.stdout.write(f"applied: {', '.join(applied)}\n" if applied else "database is up to date\n")
    return 0


async def _ensure_topics(settings: Settings) -> int:
    created, present = await ensure_topics(settings)
    for name in created:
        sys.stdout.write(f"created {name}\n")
    for name in present:
        sys.stdout.write(f"exists  {name}\n")
    return 0
