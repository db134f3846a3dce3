"""`run` and `run-once`: the process's roles until a signal, or one pass of a periodic role.
The signal handlers live here: a first SIGTERM/SIGINT drains, a second exits at once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError, DependencyRefusedError, RoleFailedError
from chat4all_workers.roles import resolve_names

if TYPE_CHECKING:
    from chat4all_workers.app import App

log = logging.getLogger("chat4all_workers.cli")


def add(commands: Any) -> None:
    run = commands.add_parser("run", help="run the enabled roles until SIGTERM/SIGINT")
    run.add_argument(
        "--roles",
        metavar="LIST",
        help="comma-separated roles, or 'all' (default: $ROLES, else [roles] enabled in the file)",
    )
    once = commands.add_parser("run-once", help="run one pass of a periodic role and exit 0/1")
    once.add_argument("role", help="a periodic role, e.g. gc")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run until a signal; a signal while start-up still waits for a dependency ends it too, with
    exit code 0 (an orchestrator stopping a pod that never became ready is not a failure)."""
    from chat4all_workers import collector
    from chat4all_workers.app import App
    from chat4all_workers.observability.tracing import configure_tracing

    names = resolve_names(
        settings.roles.enabled, source=settings.sources.get("roles.enabled", "default")
    )
    configure_tracing(
        service_name=settings.observability.service_name,
        otlp_endpoint=settings.observability.otlp_endpoint,
    )
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
    collector.tune()
    try:
        async with App(settings, roles=names) as app:
            running = app
            collector.freeze()  # what start-up made lives as long as the process
            log.info("running roles %s; operations on port %s", ",".join(names), app.http_port)
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


async def run_once(settings: Settings, args: argparse.Namespace) -> int:
    from chat4all_workers.app import run_once as run_role_once

    try:
        await run_role_once(settings, args.role)
    except (ConfigError, DependencyRefusedError):
        raise
    except Exception:
        log.exception("run-once %s failed", args.role)
        return 1
    return 0
