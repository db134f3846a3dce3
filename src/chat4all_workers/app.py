"""The composition root: builds the process and hands the supervisor its children.

`App(settings, roles=[...])` resolves the roles (the registry), checks what they require, then,
as an async context manager, opens in order and closes in reverse: the shared resources (only
what the enabled roles need), the operations server (`/metrics`, `/healthz`, `/readyz`), the
event-loop lag watchdog and the log reporter (ready, progress and drain lines), and the
supervisor with one child per role. Leaving the block drains: the supervisor stops every role
within the shutdown deadline, the reporter writes the drain summary, then the rest closes.

    async with App(settings, roles=["router"]) as app:
        await app.wait_ready()
        await app.wait()

The CLI's `run` is exactly that; tests and other programs embed roles the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

from chat4all_workers.config import Settings
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.errors import ConfigError, RoleFailedError
from chat4all_workers.listening import Address, Listening, listen
from chat4all_workers.observability.http import serve_operations
from chat4all_workers.observability.logging import bind_service
from chat4all_workers.observability.loop_lag import watch_loop_lag
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.readiness import ChildStats, Readiness
from chat4all_workers.reporting import Reporter
from chat4all_workers.resources import Need, Resources, open_resources
from chat4all_workers.role import Restart, RoleContext, RoleSpec
from chat4all_workers.roles import (
    REGISTRY,
    check_required_settings,
    check_role_keys,
    resolve_roles,
)
from chat4all_workers.schedule import Cron
from chat4all_workers.scheduling import run_on_schedule
from chat4all_workers.supervisor import ChildSpec, Supervisor


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        roles: Sequence[str | RoleSpec] | None = None,
        registry: Mapping[str, RoleSpec] = REGISTRY,
        drain: bool = False,
        serve_http: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        names = roles if roles is not None else settings.roles.enabled
        source = (
            "roles argument"
            if roles is not None
            else settings.sources.get("roles.enabled", "default")
        )
        named = [r for r in names if isinstance(r, str)]
        self.specs = [r for r in names if isinstance(r, RoleSpec)]
        if named:
            self.specs += resolve_roles(named, registry, source=source)
        _check_sections(settings, self.specs)
        check_required_settings(settings, self.specs)
        check_role_keys(settings, [*registry, *(s.name for s in self.specs)])
        self.metrics = Metrics()
        self.drain = drain
        self._serve_http = serve_http
        self._clock = clock
        self.contexts: dict[str, RoleContext] = {}
        self._ports: dict[str, Listening] = {}  # the roles' ports, bound at start-up
        self.resources: Resources | None = None
        self.http_port: int | None = None
        self.supervisor: Supervisor | None = None
        self._reporter: Reporter | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        # Shared by every part of the process: set, and begun, once a stop is requested.
        self.stopping = asyncio.Event()
        self.shutdown = ShutdownDeadline(settings.supervisor.shutdown_timeout_s)
        self.readiness = Readiness(
            children=self.stats, published=self.published, resources=None, stopping=self.stopping
        )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset().union(*(spec.needs for spec in self.specs))

    async def __aenter__(self) -> App:
        async with contextlib.AsyncExitStack() as stack:
            # The ports first: one that cannot be bound fails the start at once, before any
            # dependency is waited for (listening.py).
            operations = await self._listen_on_ports(stack)
            self.resources = await stack.enter_async_context(
                open_resources(self.settings, self.metrics, self.needs, shutdown=self.shutdown)
            )
            self.readiness = Readiness(
                children=self.stats,
                published=self.published,
                resources=self.resources,
                stopping=self.stopping,
            )
            if operations is not None:
                self.http_port = await stack.enter_async_context(
                    serve_operations(self.metrics, self.readiness, sockets=operations.lend())
                )
                operations.close()  # served by the copies from here on
            supervisor = Supervisor(
                [self._child(spec, self.resources) for spec in self.specs],
                settings=self.settings.supervisor,
                metrics=self.metrics,
                stopping=self.stopping,
                shutdown=self.shutdown,
                drain=self.drain,
                clock=self._clock,
            )
            self.supervisor = supervisor
            self._start_helpers(await stack.enter_async_context(asyncio.TaskGroup()))
            await stack.enter_async_context(supervisor)
            self._stack = stack.pop_all()
        return self

    async def _listen_on_ports(self, stack: contextlib.AsyncExitStack) -> Listening | None:
        """Bind the operations port (when served) and each role's (`RoleSpec.listens`); the
        roles' are lent to them at each start and closed once the process stops or fails to
        start. PortUnavailableError names the first that cannot be bound."""
        operations = None
        if self._serve_http:
            obs = self.settings.observability
            keys = ("observability.metrics_host", "observability.metrics_port")
            port = Address.of(
                obs.metrics_host, obs.metrics_port, keys=keys, env_of=self.settings.env_of
            )
            operations = await listen("operations", port)
            stack.callback(operations.close)
        for spec in self.specs:
            if spec.listens is not None:
                bound = await listen(spec.name, spec.listens(self.settings))
                stack.callback(bound.close)
                self._ports[spec.name] = bound
        return operations

    def _child(self, spec: RoleSpec, resources: Resources) -> ChildSpec:
        """A role as a child of the supervisor: its context, and how it starts."""
        ctx = RoleContext(
            spec.name, self.settings, resources, self.metrics, self.stopping, drain=self.drain
        )
        ctx.shutdown = self.shutdown
        ctx.listening = self._ports.get(spec.name)
        self.contexts[spec.name] = ctx
        start: Callable[[], Awaitable[None]]
        if spec.run is not None:
            start = partial(spec.run, ctx)
        else:
            assert spec.run_once is not None
            assert spec.schedule is not None
            cron = Cron.parse(spec.schedule(self.settings))
            start = partial(run_on_schedule, ctx, spec.run_once, cron, arm=spec.arm)
        restart = Restart(self.settings.roles.restart.get(spec.name, spec.restart))
        return ChildSpec(
            spec.name, start, restart, ready=lambda: ctx.is_ready, on_exit=ctx.mark_unready
        )

    def _start_helpers(self, tasks: asyncio.TaskGroup) -> None:
        """The loop-lag watchdog and the reporter: they end once the supervisor stops."""
        sup = self.settings.supervisor
        tasks.create_task(
            watch_loop_lag(
                self.metrics,
                interval_s=sup.loop_lag_interval_s,
                warn_s=sup.loop_lag_warn_s,
                stopping=self.stopping,
            ),
            name="loop-lag-watchdog",
        )
        self._reporter = Reporter(
            contexts=self.contexts,
            children=self.stats,
            metrics=self.metrics,
            interval_s=self.settings.observability.progress_interval_s,
            operations_port=self.http_port,
            stopping=self.stopping,
        )
        tasks.create_task(self._reporter.run(), name="reporter")
        tasks.create_task(self._release_ports(), name="ports")

    async def _release_ports(self) -> None:
        """Once the process stops, its own copies of the roles' ports close: a role's server
        finishes what it has, and the port refuses new connections as soon as that closes."""
        await self.stopping.wait()
        for bound in self._ports.values():
            bound.close()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        if self._reporter is not None:
            self._reporter.drain_summary()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    # -- what the embedding program uses ---------------------------------------------------------

    async def stop(self) -> None:
        """Drain every role within the shutdown deadline (the supervisor's `stop`)."""
        if self.supervisor is not None:
            await self.supervisor.stop()

    def request_stop(self) -> None:
        """Begin draining without waiting (safe from a signal handler); `wait()` then returns."""
        if self.supervisor is not None:
            self.supervisor.request_stop()
        else:
            self.shutdown.begin()
            self.stopping.set()

    async def wait(self) -> None:
        """Until a stop is requested, a permanent role escalates, or every role has ended (drain
        mode); RoleFailedError when a permanent role failed past its restart intensity."""
        if self.supervisor is not None:
            await self.supervisor.wait()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every role reports ready; TimeoutError names the ones that did not."""
        try:
            async with asyncio.timeout(timeout_s):
                while not all(ctx.is_ready for ctx in self.contexts.values()):
                    if self.failure is not None:
                        raise self.failure
                    await asyncio.sleep(0.05)
        except TimeoutError:
            waiting = [n for n, ctx in self.contexts.items() if not ctx.is_ready]
            raise TimeoutError(f"roles not ready after {timeout_s}s: {waiting}") from None

    @property
    def failure(self) -> RoleFailedError | None:
        return None if self.supervisor is None else self.supervisor.failure

    def stats(self) -> list[ChildStats]:
        return [] if self.supervisor is None else self.supervisor.stats()

    def published(self) -> dict[str, Any]:
        """The sections roles publish for `/readyz` (RoleContext.publish)."""
        sections: dict[str, Any] = {}
        for ctx in self.contexts.values():
            sections.update(ctx.published())
        return sections


def _check_sections(settings: Settings, specs: Sequence[RoleSpec]) -> None:
    """Each role's own settings section was loaded (a program that embeds roles loads its
    settings with `roles.load_settings`); else the role would crash at its first read."""
    for spec in specs:
        if spec.settings is not None and spec.settings.SECTION not in settings.sections:
            raise ValueError(
                f"role {spec.name!r} reads settings section [{spec.settings.SECTION}], which was "
                "not loaded: load the settings with chat4all_workers.roles.load_settings"
            )


async def run_once(
    settings: Settings, role: str, registry: Mapping[str, RoleSpec] = REGISTRY
) -> None:
    """One pass of a periodic role (for a Kubernetes CronJob): open its resources, run, close."""
    (spec,) = resolve_roles([role], registry, source="run-once")
    if spec.run_once is None:
        raise ConfigError("run-once", "argv", f"role {role!r} is not periodic")
    _check_sections(settings, [spec])
    check_required_settings(settings, [spec])
    metrics = Metrics()
    async with open_resources(settings, metrics, spec.needs) as resources:
        ctx = RoleContext(spec.name, settings, resources, metrics, asyncio.Event(), drain=True)
        bind_service(spec.name)
        await spec.run_once(ctx)
