"""The supervisor: every enabled role as a supervised task in one event loop (OTP one_for_one).

Child spec = a `RoleSpec` plus its restart type. A child that crashes is restarted after an
exponential backoff with full jitter; more than `max_restarts` restarts within `restart_window_s`
escalates: the child is marked failed and readiness turns false; for a permanent child the whole
supervisor then shuts down and `wait()` raises RoleFailedError (the CLI exits 1). A child that ran
healthy for `reset_after_s` gets its backoff and restart budget back. A crash in one child never
stops the others.

Shutdown runs on ONE deadline, `shutdown_timeout_s` from the stop request (a signal, `stop()`, or
an escalation) to the last connection closed (deadline.py names its points). `stopping` is set;
roles stop taking work and finish or hand back what is in flight; engines cancel handlers still
running at its drain end; children still running at its hand-back end are cancelled (the outbox
then rolls back) and, if they ignore that, reported as stuck; resources close last, in reverse
order of opening, each bounded by the deadline's end.

It supervises and nothing else: which roles exist is the registry's (`roles/__init__.py`), how a
periodic role waits for its next pass is `scheduling.py`'s, what `/readyz` answers is
`readiness.py`'s, and the ready, progress and drain lines of the log are `reporting.py`'s, both
reading the `stats()` this class exposes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any

from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import Settings
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.errors import ConfigError, RoleFailedError
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

log = logging.getLogger(__name__)


class ChildState(enum.IntEnum):
    STOPPED = 0
    RUNNING = 1
    BACKING_OFF = 2
    FAILED = 3


@dataclass
class _Child:
    spec: RoleSpec
    restart: Restart
    ctx: RoleContext
    state: ChildState = ChildState.STOPPED
    restarts: deque[float] = field(default_factory=deque)
    restarts_total: int = 0
    last_error: BaseException | None = None
    started_at: float | None = None
    ended_at: float | None = None
    cancelled: bool = False  # at the hand-back deadline
    task: asyncio.Task[None] | None = None


class Supervisor:
    """`async with Supervisor(settings, roles=["router"]) as sup: await sup.wait_ready()`."""

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
        check_required_settings(settings, self.specs)
        check_role_keys(settings, [*registry, *(s.name for s in self.specs)])
        self.metrics = Metrics()
        self.drain = drain
        self._serve_http = serve_http
        self._clock = clock
        self._stopping = asyncio.Event()
        self.shutdown = ShutdownDeadline(settings.supervisor.shutdown_timeout_s)
        self._children: dict[str, _Child] = {}
        self._failure: RoleFailedError | None = None
        self._stop_requested_at: float | None = None
        self._reporter: Reporter | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self.resources: Resources | None = None
        self.http_port: int | None = None
        self.readiness = Readiness(
            children=self.stats,
            published=self.published,
            resources=None,
            stopping=self._stopping,
        )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset().union(*(spec.needs for spec in self.specs))

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self.resources = await stack.enter_async_context(
                open_resources(self.settings, self.metrics, self.needs, shutdown=self.shutdown)
            )
            self.readiness = Readiness(
                children=self.stats,
                published=self.published,
                resources=self.resources,
                stopping=self._stopping,
            )
            if self._serve_http:
                obs = self.settings.observability
                self.http_port = await stack.enter_async_context(
                    serve_operations(
                        self.metrics, self.readiness, host=obs.metrics_host, port=obs.metrics_port
                    )
                )
            self._tasks = await stack.enter_async_context(asyncio.TaskGroup())
            for spec in self.specs:
                restart = Restart(self.settings.roles.restart.get(spec.name, spec.restart))
                ctx = RoleContext(
                    name=spec.name,
                    settings=self.settings,
                    resources=self.resources,
                    metrics=self.metrics,
                    stopping=self._stopping,
                    drain=self.drain,
                )
                ctx.shutdown = self.shutdown
                child = _Child(spec, restart, ctx)
                self._children[spec.name] = child
                child.task = self._tasks.create_task(
                    self._supervise(child), name=f"role:{spec.name}"
                )
                child.task.add_done_callback(partial(self._ended, child))
            sup = self.settings.supervisor
            self._tasks.create_task(
                watch_loop_lag(
                    self.metrics,
                    interval_s=sup.loop_lag_interval_s,
                    warn_s=sup.loop_lag_warn_s,
                    stopping=self._stopping,
                ),
                name="loop-lag-watchdog",
            )
            self._reporter = Reporter(
                contexts={name: child.ctx for name, child in self._children.items()},
                children=self.stats,
                metrics=self.metrics,
                interval_s=self.settings.observability.progress_interval_s,
                operations_port=self.http_port,
                stopping=self._stopping,
            )
            self._tasks.create_task(self._reporter.run(), name="reporter")
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._reporter is not None:
            self._reporter.drain_summary()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            # Children have ended, so the task group exits quietly; the body's own exception
            # (if any) propagates unchanged instead of wrapped in an ExceptionGroup.
            await stack.__aexit__(None, None, None)

    async def stop(self) -> None:
        """Drain: ask every role to stop, wait until the deadline's hand-back end, cancel the
        rest and give them until its clean-up end."""
        self._begin_stopping()
        tasks = [
            c.task for c in self._children.values() if c.task is not None and not c.task.done()
        ]
        if not tasks:
            return
        deadline = self.shutdown
        _, stuck = await asyncio.wait(tasks, timeout=deadline.left_s(deadline.handback_end()))
        by_task = {c.task: c for c in self._children.values()}
        for task in stuck:
            by_task[task].cancelled = True
            # Expected of a role waiting out an outage (the outbox's batch, for one): it rolls
            # back. A role that ignores the cancellation too is an ERROR below.
            log.warning(
                "role %s still running at the shutdown deadline's hand-back (%.1fs budget); "
                "cancelling it",
                task.get_name().removeprefix("role:"),
                deadline.budget_s,
            )
            task.cancel()
        if stuck:
            _, ignored = await asyncio.wait(stuck, timeout=deadline.left_s(deadline.cleanup_end()))
            for task in ignored:
                log.error("role %s is stuck: it ignored cancellation", task.get_name())

    def request_stop(self) -> None:
        """Begin draining without waiting (safe from a signal handler); `wait()` then returns."""
        self._begin_stopping()

    def _begin_stopping(self) -> None:
        """The shutdown deadline starts now (once), then roles are told to stop."""
        self.shutdown.begin()
        if self._stop_requested_at is None:
            self._stop_requested_at = self._clock()
        self._stopping.set()

    async def wait(self) -> None:
        """Until a stop is requested, a permanent role escalates, or every child has ended
        (drain mode). Raises RoleFailedError when a permanent role failed past its intensity.
        Leaving the `async with` block then drains the rest within the shutdown timeout."""
        tasks = [c.task for c in self._children.values() if c.task is not None]
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
            while not stopping.done() and not all(t.done() for t in tasks):
                await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if self._failure is not None:
            raise self._failure

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every role reports ready; TimeoutError names the ones that did not."""
        try:
            async with asyncio.timeout(timeout_s):
                while not all(c.ctx.is_ready for c in self._children.values()):
                    if self._failure is not None:
                        raise self._failure
                    await asyncio.sleep(0.05)
        except TimeoutError:
            waiting = [n for n, c in self._children.items() if not c.ctx.is_ready]
            raise TimeoutError(f"roles not ready after {timeout_s}s: {waiting}") from None

    @property
    def failure(self) -> RoleFailedError | None:
        return self._failure

    # -- introspection ----------------------------------------------------------------------

    def stats(self) -> list[ChildStats]:
        return [
            ChildStats(
                role=name,
                state=child.state.name.lower(),
                ready=child.ctx.is_ready,
                restart=child.restart.value,
                restarts_total=child.restarts_total,
                last_error=None if child.last_error is None else repr(child.last_error),
                stop_s=self._stop_s(child),
                cancelled=child.cancelled,
            )
            for name, child in self._children.items()
        ]

    def _stop_s(self, child: _Child) -> float | None:
        if child.ended_at is None:
            return None
        requested = self._stop_requested_at
        return 0.0 if requested is None else max(0.0, child.ended_at - requested)

    def _ended(self, child: _Child, _: asyncio.Task[None]) -> None:
        child.ended_at = self._clock()

    def published(self) -> dict[str, Any]:
        """The sections roles publish for `/readyz` (RoleContext.publish)."""
        sections: dict[str, Any] = {}
        for child in self._children.values():
            sections.update(child.ctx.published())
        return sections

    # -- the child wrapper ------------------------------------------------------------------

    async def _supervise(self, child: _Child) -> None:
        """Run, restart, escalate. The one place where a broad `except` is right."""
        bind_service(child.spec.name)
        sup = self.settings.supervisor
        attempt = 0
        while not self._stopping.is_set():
            self._set_state(child, ChildState.RUNNING)
            child.started_at = self._clock()
            abnormal = False
            try:
                await self._run_child(child)
            except asyncio.CancelledError:
                self._set_state(child, ChildState.STOPPED)
                raise
            except Exception as exc:  # the one broad except: a crash is restarted
                abnormal = True
                child.last_error = exc
                if not self._stopping.is_set():
                    log.error("role %s crashed: %r", child.spec.name, exc, exc_info=exc)
            child.ctx.mark_unready()
            if self._stopping.is_set():
                break
            if not self._should_restart(child, abnormal):
                self._set_state(child, ChildState.STOPPED if not abnormal else ChildState.FAILED)
                return
            now = self._clock()
            if child.started_at is not None and now - child.started_at >= sup.reset_after_s:
                attempt = 0
                child.restarts.clear()
            child.restarts.append(now)
            while child.restarts and now - child.restarts[0] > sup.restart_window_s:
                child.restarts.popleft()
            child.restarts_total += 1
            reason = (
                type(child.last_error).__name__ if abnormal and child.last_error else "normal_exit"
            )
            self.metrics.supervisor_restarts.inc({"role": child.spec.name, "reason": reason})
            if len(child.restarts) > sup.max_restarts:
                self._escalate(child)
                return
            delay = backoff_delay_s(attempt, base_s=sup.backoff_base_s, cap_s=sup.backoff_cap_s)
            attempt += 1
            log.warning(
                "restarting role %s in %.2fs (restart %d within %.0fs)",
                child.spec.name,
                delay,
                len(child.restarts),
                sup.restart_window_s,
            )
            self._set_state(child, ChildState.BACKING_OFF)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        if child.state is not ChildState.FAILED:
            self._set_state(child, ChildState.STOPPED)

    def _should_restart(self, child: _Child, abnormal: bool) -> bool:
        if self.drain and not abnormal:
            return False
        if child.restart is Restart.TEMPORARY:
            if abnormal:
                log.error(
                    "temporary role %s ended abnormally; it is not restarted", child.spec.name
                )
            return False
        if child.restart is Restart.TRANSIENT:
            return abnormal
        return True

    def _escalate(self, child: _Child) -> None:
        self._set_state(child, ChildState.FAILED)
        failure = RoleFailedError(child.spec.name, child.last_error)
        if child.restart is Restart.PERMANENT:
            log.critical("%s; shutting down", failure)
            self._failure = failure
            self._begin_stopping()
        else:
            log.error("%s; left stopped (restart=%s)", failure, child.restart.value)

    async def _run_child(self, child: _Child) -> None:
        spec = child.spec
        if spec.run is not None:
            await spec.run(child.ctx)
            return
        assert spec.run_once is not None
        assert spec.schedule is not None
        cron = Cron.parse(spec.schedule(self.settings))
        await run_on_schedule(child.ctx, spec.run_once, cron, arm=spec.arm)

    def _set_state(self, child: _Child, state: ChildState) -> None:
        child.state = state
        self.metrics.role_state.set({"role": child.spec.name}, int(state))


async def run_once(
    settings: Settings, role: str, registry: Mapping[str, RoleSpec] = REGISTRY
) -> None:
    """One pass of a periodic role (for a Kubernetes CronJob): open its resources, run, close."""
    (spec,) = resolve_roles([role], registry, source="run-once")
    if spec.run_once is None:
        raise ConfigError("run-once", "argv", f"role {role!r} is not periodic")
    check_required_settings(settings, [spec])
    metrics = Metrics()
    async with open_resources(settings, metrics, spec.needs) as resources:
        ctx = RoleContext(spec.name, settings, resources, metrics, asyncio.Event(), drain=True)
        bind_service(spec.name)
        await spec.run_once(ctx)
