"""The supervisor alone (supervisor.py): children given as `ChildSpec`s, no roles, no services.

Restart types, intensity and its window, the backoff, `reset_after_s`, stopping (finish, hand
back, cancel, stuck), `stats()` and drain mode. Where time matters the supervisor gets an
injected clock that a child moves forward itself (a run that "lasts" ten seconds takes none).
The App-level tests (roles, contexts, readiness) are in tests/test_app.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from chat4all_workers.config import SupervisorSettings
from chat4all_workers.errors import RoleFailedError
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.role import Restart
from chat4all_workers.supervisor import ChildSpec, Supervisor
from harness.waiting import eventually
from tests.support import metric_value

pytestmark = pytest.mark.timeout(30)


def supervisor_settings(**values: Any) -> SupervisorSettings:
    """Restarts at once (no backoff) unless a test says otherwise."""
    defaults: dict[str, Any] = {
        "backoff_base_s": 0.0,
        "backoff_cap_s": 0.0,
        "max_restarts": 3,
        "restart_window_s": 60.0,
        "reset_after_s": 300.0,
        "shutdown_timeout_s": 2.0,
    }
    return SupervisorSettings(**{**defaults, **values})


class Clock:
    """The supervisor's clock, moved by the test (or by a child's run)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Child:
    """A child's `start`: each run does what the script says, the last step repeating.

    "crash" raises, "return" ends normally, "serve" runs until the supervisor is stopping.
    With a clock, every run moves it on by `run_s` (the run "lasted" that long)."""

    def __init__(
        self,
        *script: str,
        stopping: asyncio.Event,
        clock: Clock | None = None,
        run_s: float = 0.0,
    ) -> None:
        self.script = script
        self.stopping = stopping
        self.clock = clock
        self.run_s = run_s
        self.starts = 0
        self.exits = 0

    async def __call__(self) -> None:
        self.starts += 1
        step = self.script[min(self.starts, len(self.script)) - 1]
        if self.clock is not None:
            self.clock.now += self.run_s
        if step == "crash":
            raise RuntimeError(f"crash {self.starts}")
        if step == "serve":
            await self.stopping.wait()

    def exited(self) -> None:
        self.exits += 1


@asynccontextmanager
async def supervising(
    *children: ChildSpec,
    settings: SupervisorSettings | None = None,
    stopping: asyncio.Event,
    metrics: Metrics | None = None,
    drain: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Supervisor]:
    async with Supervisor(
        children,
        settings=settings or supervisor_settings(),
        metrics=metrics or Metrics(),
        stopping=stopping,
        drain=drain,
        clock=clock,
    ) as supervisor:
        yield supervisor


def stats_of(supervisor: Supervisor, child_id: str) -> Any:
    return next(s for s in supervisor.stats() if s.role == child_id)


def state(supervisor: Supervisor, child_id: str) -> str:
    return str(stats_of(supervisor, child_id).state)


# -- restart types --------------------------------------------------------------------------------


async def test_supervisor_restarts_a_crashed_permanent_child() -> None:
    stopping = asyncio.Event()
    metrics = Metrics()
    child = Child("crash", "crash", "serve", stopping=stopping)
    async with supervising(
        ChildSpec("worker", child), stopping=stopping, metrics=metrics
    ) as supervisor:
        await eventually(lambda: child.starts == 3, timeout_s=5, message="the third run")
        stats = stats_of(supervisor, "worker")

    assert (stats.state, stats.restarts_total) == ("running", 2)
    assert stats.last_error == "RuntimeError('crash 2')"
    restarts = {"role": "worker", "reason": "RuntimeError"}
    assert metric_value(metrics.supervisor_restarts, restarts) == 2


async def test_supervisor_restarts_a_permanent_child_after_a_normal_exit() -> None:
    stopping = asyncio.Event()
    metrics = Metrics()
    child = Child("return", "serve", stopping=stopping)
    async with supervising(ChildSpec("worker", child), stopping=stopping, metrics=metrics):
        await eventually(lambda: child.starts == 2, timeout_s=5, message="the second run")

    restarts = {"role": "worker", "reason": "normal_exit"}
    assert metric_value(metrics.supervisor_restarts, restarts) == 1


async def test_supervisor_restarts_a_transient_child_after_a_crash() -> None:
    stopping = asyncio.Event()
    child = Child("crash", "serve", stopping=stopping)
    spec = ChildSpec("worker", child, Restart.TRANSIENT)
    async with supervising(spec, stopping=stopping) as supervisor:
        await eventually(lambda: child.starts == 2, timeout_s=5, message="the second run")
        running = state(supervisor, "worker")

    assert running == "running"


async def test_supervisor_leaves_a_transient_child_stopped_after_a_normal_exit() -> None:
    stopping = asyncio.Event()
    child = Child("return", stopping=stopping)
    spec = ChildSpec("worker", child, Restart.TRANSIENT)
    async with supervising(spec, stopping=stopping) as supervisor:
        await eventually(
            lambda: child.starts == 1 and state(supervisor, "worker") == "stopped",
            timeout_s=5,
            message="the run ended",
        )
        restarts = stats_of(supervisor, "worker").restarts_total

    assert child.starts == 1
    assert restarts == 0


@pytest.mark.parametrize(("step", "end_state"), [("crash", "failed"), ("return", "stopped")])
async def test_supervisor_never_restarts_a_temporary_child(step: str, end_state: str) -> None:
    stopping = asyncio.Event()
    child = Child(step, stopping=stopping)
    spec = ChildSpec("once", child, Restart.TEMPORARY)
    async with supervising(spec, stopping=stopping) as supervisor:
        await eventually(
            lambda: child.starts == 1 and state(supervisor, "once") == end_state,
            timeout_s=5,
            message=f"the temporary child {end_state}",
        )

    assert child.starts == 1
    assert supervisor.failure is None


# -- intensity ------------------------------------------------------------------------------------


async def test_supervisor_escalates_a_permanent_child_past_its_intensity() -> None:
    stopping = asyncio.Event()
    crasher = Child("crash", stopping=stopping)
    steady = Child("serve", stopping=stopping)
    settings = supervisor_settings(max_restarts=2)
    children = [ChildSpec("crashy", crasher), ChildSpec("steady", steady)]
    async with supervising(*children, settings=settings, stopping=stopping) as supervisor:
        with pytest.raises(RoleFailedError, match="'crashy' failed past") as failure:
            await asyncio.wait_for(supervisor.wait(), 10)

    assert crasher.starts == 3  # the first run and two restarts; the third crash escalates
    assert isinstance(failure.value.last_error, RuntimeError)
    assert supervisor.failure is failure.value
    assert stopping.is_set()  # every child was stopped
    states = {s.role: s.state for s in supervisor.stats()}
    assert states == {"crashy": "failed", "steady": "stopped"}


async def test_supervisor_leaves_a_transient_child_failed_past_its_intensity() -> None:
    stopping = asyncio.Event()
    crasher = Child("crash", stopping=stopping)
    steady = Child("serve", stopping=stopping)
    settings = supervisor_settings(max_restarts=1)
    children = [ChildSpec("crashy", crasher, Restart.TRANSIENT), ChildSpec("steady", steady)]
    async with supervising(*children, settings=settings, stopping=stopping) as supervisor:
        await eventually(
            lambda: state(supervisor, "crashy") == "failed", timeout_s=5, message="crashy failed"
        )
        others = state(supervisor, "steady")
        stopped = stopping.is_set()

    assert crasher.starts == 2
    assert supervisor.failure is None
    assert (others, stopped) == ("running", False)  # a crash never stops the others


async def test_supervisor_escalates_restarts_that_come_within_the_window() -> None:
    stopping, clock = asyncio.Event(), Clock()
    child = Child("crash", stopping=stopping, clock=clock, run_s=10.0)
    settings = supervisor_settings(max_restarts=1, restart_window_s=15.0)
    async with supervising(
        ChildSpec("worker", child), settings=settings, stopping=stopping, clock=clock
    ) as supervisor:
        with pytest.raises(RoleFailedError):
            await asyncio.wait_for(supervisor.wait(), 10)

    assert child.starts == 2  # restarts at +10 s and +20 s: two within 15 s


async def test_supervisor_forgets_restarts_older_than_the_window() -> None:
    stopping, clock = asyncio.Event(), Clock()
    child = Child("crash", stopping=stopping, clock=clock, run_s=10.0)
    settings = supervisor_settings(max_restarts=1, restart_window_s=5.0)
    async with supervising(
        ChildSpec("worker", child), settings=settings, stopping=stopping, clock=clock
    ) as supervisor:
        await eventually(lambda: child.starts >= 8, timeout_s=5, message="many restarts")
        failure = supervisor.failure

    assert failure is None  # one restart per 10 s never makes two within 5 s


async def test_supervisor_gives_back_the_restart_budget_after_reset_after_s() -> None:
    stopping, clock = asyncio.Event(), Clock()
    child = Child("crash", stopping=stopping, clock=clock, run_s=10.0)
    settings = supervisor_settings(max_restarts=1, restart_window_s=1000.0, reset_after_s=10.0)
    async with supervising(
        ChildSpec("worker", child), settings=settings, stopping=stopping, clock=clock
    ) as supervisor:
        await eventually(lambda: child.starts >= 8, timeout_s=5, message="many restarts")
        failure = supervisor.failure

    assert failure is None  # each run was healthy for reset_after_s: its budget came back


# -- backoff --------------------------------------------------------------------------------------


async def test_supervisor_backs_off_before_restarting_a_crashed_child() -> None:
    stopping = asyncio.Event()
    child = Child("crash", stopping=stopping)
    # Full jitter over an hour: a restart within this test would take a 1-in-10^4 draw.
    settings = supervisor_settings(backoff_base_s=3600.0, backoff_cap_s=3600.0)
    async with supervising(
        ChildSpec("worker", child), settings=settings, stopping=stopping
    ) as supervisor:
        await eventually(
            lambda: state(supervisor, "worker") == "backing_off", timeout_s=5, message="backoff"
        )
        starts = child.starts

    assert starts == 1


async def test_supervisor_stop_ends_a_backoff_at_once() -> None:
    stopping = asyncio.Event()
    child = Child("crash", stopping=stopping)
    settings = supervisor_settings(backoff_base_s=3600.0, backoff_cap_s=3600.0)
    async with supervising(
        ChildSpec("worker", child), settings=settings, stopping=stopping
    ) as supervisor:
        await eventually(
            lambda: state(supervisor, "worker") == "backing_off", timeout_s=5, message="backoff"
        )
        began = time.monotonic()
        await supervisor.stop()
        stop_took_s = time.monotonic() - began

    assert stop_took_s < 2.0  # not the hour of backoff
    assert (state(supervisor, "worker"), child.starts) == ("stopped", 1)


# -- stopping -------------------------------------------------------------------------------------


async def test_supervisor_stop_lets_a_child_hand_back_its_work_and_times_it() -> None:
    stopping, clock = asyncio.Event(), Clock()

    started = asyncio.Event()

    async def hands_back() -> None:
        started.set()
        await stopping.wait()
        clock.now += 2.5  # finishing what it holds "takes" 2.5 s

    async with supervising(
        ChildSpec("worker", hands_back), stopping=stopping, clock=clock
    ) as supervisor:
        await started.wait()
        await supervisor.stop()
        stats = stats_of(supervisor, "worker")

    assert (stats.state, stats.stop_s, stats.cancelled) == ("stopped", 2.5, False)


async def test_supervisor_stop_cancels_a_child_still_running_at_the_hand_back_deadline() -> None:
    stopping, started = asyncio.Event(), asyncio.Event()

    async def ignores_the_stop() -> None:
        started.set()
        await asyncio.Event().wait()

    settings = supervisor_settings(shutdown_timeout_s=0.4)
    async with supervising(
        ChildSpec("stubborn", ignores_the_stop), settings=settings, stopping=stopping
    ) as supervisor:
        await started.wait()
        began = time.monotonic()
        await supervisor.stop()
        stop_took_s = time.monotonic() - began
        stats = stats_of(supervisor, "stubborn")

    assert (stats.state, stats.cancelled) == ("stopped", True)
    assert 0.2 < stop_took_s < 2.0  # at the hand-back end of a 0.4 s budget


async def test_supervisor_stop_reports_a_child_that_ignores_cancellation_as_stuck(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopping, started, released = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def ignores_cancellation() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await released.wait()  # the bug this guards against: cancellation swallowed

    settings = supervisor_settings(shutdown_timeout_s=0.4)
    async with supervising(
        ChildSpec("stuck", ignores_cancellation), settings=settings, stopping=stopping
    ) as supervisor:
        await started.wait()
        with caplog.at_level(logging.ERROR, logger="chat4all_workers.supervisor"):
            await supervisor.stop()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        cancelled = stats_of(supervisor, "stuck").cancelled
        released.set()  # let it end, so that the block can
        await eventually(
            lambda: state(supervisor, "stuck") == "stopped", timeout_s=5, message="it ended"
        )

    assert errors == ["role stuck is stuck: it ignored cancellation"]
    assert cancelled is True


async def test_supervisor_wait_returns_once_a_stop_is_requested() -> None:
    stopping = asyncio.Event()
    child = Child("serve", stopping=stopping)
    async with supervising(ChildSpec("worker", child), stopping=stopping) as supervisor:
        waiting = asyncio.ensure_future(supervisor.wait())
        supervisor.request_stop()
        await asyncio.wait_for(waiting, 5)
        begun = supervisor.shutdown.begun

    assert begun is True
    assert supervisor.failure is None


# -- introspection --------------------------------------------------------------------------------


async def test_supervisor_stats_describe_each_child() -> None:
    stopping = asyncio.Event()
    child = Child("crash", "serve", stopping=stopping)
    spec = ChildSpec("worker", child, Restart.TRANSIENT, ready=lambda: child.starts == 2)
    async with supervising(spec, stopping=stopping) as supervisor:
        await eventually(lambda: child.starts == 2, timeout_s=5, message="the second run")
        (stats,) = supervisor.stats()

    assert stats.role == "worker"
    assert (stats.state, stats.ready, stats.restart) == ("running", True, "transient")
    assert (stats.restarts_total, stats.last_error) == (1, "RuntimeError('crash 1')")
    assert (stats.stop_s, stats.cancelled) == (None, False)


async def test_supervisor_role_state_gauge_follows_the_child() -> None:
    stopping = asyncio.Event()
    metrics = Metrics()
    child = Child("crash", stopping=stopping)
    spec = ChildSpec("once", child, Restart.TEMPORARY)
    async with supervising(spec, stopping=stopping, metrics=metrics) as supervisor:
        await eventually(
            lambda: state(supervisor, "once") == "failed", timeout_s=5, message="failed"
        )

    assert metric_value(metrics.role_state, {"role": "once"}) == 3  # FAILED


async def test_supervisor_calls_on_exit_after_each_run() -> None:
    stopping = asyncio.Event()
    child = Child("crash", "return", "serve", stopping=stopping)
    spec = ChildSpec("worker", child, on_exit=child.exited)
    async with supervising(spec, stopping=stopping):
        await eventually(lambda: child.starts == 3, timeout_s=5, message="the third run")
        exits_while_running = child.exits

    assert exits_while_running == 2
    assert child.exits == 3  # the last run, once stopped


# -- drain mode -----------------------------------------------------------------------------------


async def test_supervisor_drain_mode_wait_returns_once_every_child_returned() -> None:
    stopping = asyncio.Event()
    first, second = Child("return", stopping=stopping), Child("return", stopping=stopping)
    async with supervising(
        ChildSpec("a", first), ChildSpec("b", second), stopping=stopping, drain=True
    ) as supervisor:
        await asyncio.wait_for(supervisor.wait(), 5)
        states = {s.role: s.state for s in supervisor.stats()}

    assert (first.starts, second.starts) == (1, 1)  # a normal exit is the end, not a restart
    assert states == {"a": "stopped", "b": "stopped"}
    assert supervisor.failure is None


async def test_supervisor_drain_mode_still_restarts_a_crashed_child() -> None:
    stopping = asyncio.Event()
    child = Child("crash", "return", stopping=stopping)
    async with supervising(ChildSpec("worker", child), stopping=stopping, drain=True) as supervisor:
        await asyncio.wait_for(supervisor.wait(), 5)

    assert child.starts == 2
