"""The supervisor: children run as supervised tasks in one event loop (OTP one_for_one).

A child is a `ChildSpec`: an id, a coroutine function to start it, and its OTP restart type. A
child that crashes is restarted after an exponential backoff with full jitter; more than
`max_restarts` restarts within `restart_window_s` escalates: the child is marked failed; for a
permanent child the supervisor then stops every child and `wait()` raises RoleFailedError (the
CLI exits 1). A child that ran healthy for `reset_after_s` gets its backoff and restart budget
back. A crash in one child never stops the others.

Shutdown runs on ONE deadline (deadline.py), `shutdown_timeout_s` from the stop request (a
signal, `stop()`, or an escalation): `stopping` is set; children stop taking work and finish or
hand back what is in flight; those still running at the deadline's hand-back end are cancelled
and, if they ignore that too, reported as stuck at its clean-up end.

It supervises and nothing else: it knows child specs, not roles, Kafka or resources. The
composition root (app.py) builds the process and hands it its children.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from chat4all_workers.background import TaskOwner
from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import SupervisorSettings
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.errors import RoleFailedError
from chat4all_workers.frozen import frozen
from chat4all_workers.observability.logging import bind_service
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.readiness import ChildStats
from chat4all_workers.role import Restart
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


class ChildState(enum.IntEnum):
    STOPPED = 0
    RUNNING = 1
    BACKING_OFF = 2
    FAILED = 3


def _always_ready() -> bool:
    return True


def _nothing() -> None:
    return None


@frozen
class ChildSpec:
    """One child: `start()` runs it until it returns (a stop, or the end of its work in drain
    mode); `ready()` says whether it serves; `on_exit()` runs after each run."""

    id: str
    start: Callable[[], Awaitable[None]]
    restart: Restart = Restart.PERMANENT
    ready: Callable[[], bool] = _always_ready
    on_exit: Callable[[], None] = _nothing


@dataclass
class _Child:
    spec: ChildSpec
    state: ChildState = ChildState.STOPPED
    restarts: deque[float] = field(default_factory=deque)
    restarts_total: int = 0
    last_error: BaseException | None = None
    started_at: float | None = None
    ended_at: float | None = None
    cancelled: bool = False  # at the hand-back deadline
    task: asyncio.Task[None] | None = None


class Supervisor(TaskOwner):
    """`async with Supervisor(children, settings=..., metrics=...) as sup: await sup.wait()`."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        *,
        settings: SupervisorSettings,
        metrics: Metrics,
        stopping: asyncio.Event | None = None,
        shutdown: ShutdownDeadline | None = None,
        drain: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.stopping = stopping or asyncio.Event()
        self.shutdown = shutdown or ShutdownDeadline(settings.shutdown_timeout_s)
        self.drain = drain
        self._clock = clock
        self._children = {spec.id: _Child(spec) for spec in children}
        self._failure: RoleFailedError | None = None
        self._stop_requested_at: float | None = None

    async def __aenter__(self) -> Supervisor:
        tasks = await self._open_tasks()
        for child in self._children.values():
            child.task = tasks.create_task(self._supervise(child), name=child.spec.id)
            child.task.add_done_callback(partial(self._ended, child))
        return self

    async def _close(self) -> None:
        await self.stop()
        # Every child has ended, so the group exits at once.
        await self._close_tasks()

    # -- stopping -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain: ask every child to stop, wait until the deadline's hand-back end, cancel the
        rest and give them until its clean-up end."""
        self.request_stop()
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
            # Expected of a child waiting out an outage (the outbox's batch, for one): it rolls
            # back. A child that ignores the cancellation too is an ERROR below.
            log.warning(
                "role %s still running at the shutdown deadline's hand-back (%.1fs budget); "
                "cancelling it",
                task.get_name(),
                deadline.budget_s,
            )
            task.cancel()
        if stuck:
            _, ignored = await asyncio.wait(stuck, timeout=deadline.left_s(deadline.cleanup_end()))
            for task in ignored:
                log.error("role %s is stuck: it ignored cancellation", task.get_name())

    def request_stop(self) -> None:
        """Begin draining without waiting (safe from a signal handler): the shutdown deadline
        starts now (once), then the children are told to stop."""
        self.shutdown.begin()
        if self._stop_requested_at is None:
            self._stop_requested_at = self._clock()
        self.stopping.set()

    async def wait(self) -> None:
        """Until a stop is requested, a permanent child escalates, or every child has ended
        (drain mode). Raises RoleFailedError when a permanent child failed past its intensity."""
        tasks = [c.task for c in self._children.values() if c.task is not None]
        async with asyncio.TaskGroup() as group:
            stopped = group.create_task(self.stopping.wait())
            while not stopped.done() and not all(t.done() for t in tasks):
                await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        if self._failure is not None:
            raise self._failure

    @property
    def failure(self) -> RoleFailedError | None:
        return self._failure

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> list[ChildStats]:
        return [
            ChildStats(
                role=name,
                state=child.state.name.lower(),
                ready=child.spec.ready(),
                restart=child.spec.restart.value,
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

    # -- the child wrapper ----------------------------------------------------------------------

    async def _supervise(self, child: _Child) -> None:
        """Run, restart, escalate. The one place where a broad `except` is right."""
        bind_service(child.spec.id)
        attempt = 0
        while not self.stopping.is_set():
            self._set_state(child, ChildState.RUNNING)
            child.started_at = self._clock()
            abnormal = False
            try:
                await child.spec.start()
            except asyncio.CancelledError:
                self._set_state(child, ChildState.STOPPED)
                raise
            except Exception as exc:  # the one broad except: a crash is restarted
                abnormal = True
                child.last_error = exc
                if not self.stopping.is_set():
                    log.error("role %s crashed: %r", child.spec.id, exc, exc_info=exc)
            child.spec.on_exit()
            if self.stopping.is_set():
                break
            if not self._should_restart(child, abnormal):
                self._set_state(child, ChildState.STOPPED if not abnormal else ChildState.FAILED)
                return
            attempt = self._count_restart(child, abnormal, attempt)
            if child.state is ChildState.FAILED:
                return
            delay = backoff_delay_s(
                attempt, base_s=self._settings.backoff_base_s, cap_s=self._settings.backoff_cap_s
            )
            attempt += 1
            log.warning(
                "restarting role %s in %.2fs (restart %d within %.0fs)",
                child.spec.id,
                delay,
                len(child.restarts),
                self._settings.restart_window_s,
            )
            self._set_state(child, ChildState.BACKING_OFF)
            await wait_event(self.stopping, timeout_s=delay)
        if child.state is not ChildState.FAILED:
            self._set_state(child, ChildState.STOPPED)

    def _count_restart(self, child: _Child, abnormal: bool, attempt: int) -> int:
        """Book a restart in the child's window (and escalate past the intensity); the backoff
        attempt to use (0 again after `reset_after_s` of health)."""
        settings, now = self._settings, self._clock()
        if child.started_at is not None and now - child.started_at >= settings.reset_after_s:
            attempt = 0
            child.restarts.clear()
        child.restarts.append(now)
        while child.restarts and now - child.restarts[0] > settings.restart_window_s:
            child.restarts.popleft()
        child.restarts_total += 1
        reason = type(child.last_error).__name__ if abnormal and child.last_error else "normal_exit"
        self._metrics.supervisor_restarts.inc({"role": child.spec.id, "reason": reason})
        if len(child.restarts) > settings.max_restarts:
            self._escalate(child)
        return attempt

    def _should_restart(self, child: _Child, abnormal: bool) -> bool:
        if self.drain and not abnormal:
            return False
        if child.spec.restart is Restart.TEMPORARY:
            if abnormal:
                log.error("temporary role %s ended abnormally; it is not restarted", child.spec.id)
            return False
        if child.spec.restart is Restart.TRANSIENT:
            return abnormal
        return True

    def _escalate(self, child: _Child) -> None:
        self._set_state(child, ChildState.FAILED)
        failure = RoleFailedError(child.spec.id, child.last_error)
        if child.spec.restart is Restart.PERMANENT:
            log.critical("%s; shutting down", failure)
            self._failure = failure
            self.request_stop()
        else:
            log.error("%s; left stopped (restart=%s)", failure, child.spec.restart.value)

    def _set_state(self, child: _Child, state: ChildState) -> None:
        child.state = state
        self._metrics.role_state.set({"role": child.spec.id}, int(state))
