"""Supervision semantics (OTP one_for_one) with roles defined in the test; no services needed."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat4all_workers.app import App
from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError, RoleFailedError
from chat4all_workers.role import Restart, RoleContext, RoleSpec
from chat4all_workers.roles import CATALOGUE, resolve_roles
from harness.waiting import eventually
from tests.support import metric_value


def fast_settings(**supervisor: float) -> Settings:
    values = {
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "max_restarts": 3,
        "restart_window_s": 60.0,
        "shutdown_timeout_s": 2.0,
        **supervisor,
    }
    return Settings.load({}, {"supervisor": values, "observability": {"metrics_port": 0}})


class Crasher:
    """A role body that crashes every time, counting its starts."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    async def __call__(self, ctx: RoleContext) -> None:
        self.starts.append(time.monotonic())
        raise RuntimeError(f"crash {len(self.starts)}")


class Ticker:
    """A healthy role body: ticks until asked to stop."""

    def __init__(self) -> None:
        self.ticks = 0

    async def __call__(self, ctx: RoleContext) -> None:
        ctx.mark_ready()
        while not ctx.stopping.is_set():
            self.ticks += 1
            await asyncio.sleep(0.005)


def spec(name: str, run: object, restart: Restart = Restart.PERMANENT) -> RoleSpec:
    return RoleSpec(name=name, needs=frozenset(), run=run, restart=restart)  # type: ignore[arg-type]


def test_backoff_ceiling_grows_exponentially_up_to_the_cap() -> None:
    delays = [backoff_delay_s(n, base_s=0.5, cap_s=4.0, jitter=False) for n in range(6)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_full_jitter_stays_within_the_ceiling() -> None:
    samples = [backoff_delay_s(3, base_s=0.5, cap_s=30.0) for _ in range(200)]

    assert all(0.0 <= s <= 4.0 for s in samples)
    assert len(set(samples)) > 100


async def test_supervisor_restarts_a_crashing_role_and_counts_restarts() -> None:
    crasher, ticker = Crasher(), Ticker()
    settings = fast_settings(max_restarts=100)
    async with App(
        settings, roles=[spec("crashy", crasher), spec("steady", ticker)], serve_http=False
    ) as app:
        await eventually(lambda: len(crasher.starts) >= 4, message="four starts")
        (restarts,) = [s.restarts_total for s in app.stats() if s.role == "crashy"]

    assert restarts >= 3
    counted = metric_value(
        app.metrics.supervisor_restarts, {"role": "crashy", "reason": "RuntimeError"}
    )
    assert counted >= 3
    assert ticker.ticks > 0


async def test_supervisor_escalates_a_permanent_role_past_its_intensity() -> None:
    crasher, ticker = Crasher(), Ticker()
    settings = fast_settings(max_restarts=2)
    async with App(
        settings, roles=[spec("crashy", crasher), spec("steady", ticker)], serve_http=False
    ) as app:
        with pytest.raises(RoleFailedError, match="crashy") as failure:
            await asyncio.wait_for(app.wait(), 10)
        ticks_while_crashing = ticker.ticks

    assert len(crasher.starts) == 3  # the first run and two restarts; the third crash escalates
    assert isinstance(failure.value.last_error, RuntimeError)
    assert ticks_while_crashing > 0  # the other role kept running meanwhile
    assert {s.role: s.state for s in app.stats()} == {"crashy": "failed", "steady": "stopped"}


async def test_supervisor_leaves_a_transient_role_failed_and_keeps_running() -> None:
    crasher, ticker = Crasher(), Ticker()
    settings = fast_settings(max_restarts=1)
    async with App(
        settings,
        roles=[spec("crashy", crasher, Restart.TRANSIENT), spec("steady", ticker)],
        serve_http=False,
    ) as app:
        await eventually(lambda: _state(app, "crashy") == "failed", message="crashy failed")
        ticks = ticker.ticks
        await eventually(lambda: ticker.ticks > ticks + 5, message="steady still ticking")
        ready, detail = await app.readiness()

    assert app.failure is None
    assert len(crasher.starts) == 2
    assert ready is False
    assert detail["roles"]["crashy"]["state"] == "failed"


async def test_readiness_shows_what_a_role_publishes_without_turning_unready() -> None:
    class Gate:
        def __init__(self) -> None:
            self.state = "active"

        def stats(self) -> dict[str, str]:
            return {"state": self.state}

    gate = Gate()

    async def publisher(ctx: RoleContext) -> None:
        ctx.publish("gates", lambda: {"g1": gate.stats()})
        ctx.mark_ready()
        await ctx.stopping.wait()

    async with App(fast_settings(), roles=[spec("publisher", publisher)], serve_http=False) as app:
        await app.wait_ready(timeout_s=5)
        gate.state = "paused"
        ready, detail = await app.readiness()

    assert ready is True
    assert detail["gates"] == {"g1": {"state": "paused"}}  # described at request time


async def test_supervisor_never_restarts_a_temporary_role() -> None:
    crasher, ticker = Crasher(), Ticker()
    async with App(
        fast_settings(),
        roles=[spec("once", crasher, Restart.TEMPORARY), spec("steady", ticker)],
        serve_http=False,
    ) as app:
        await eventually(lambda: _state(app, "once") == "failed", message="temporary role ended")
        await eventually(lambda: ticker.ticks > 10, message="steady ticking")

    assert len(crasher.starts) == 1
    assert app.failure is None


async def test_supervisor_gives_back_the_restart_budget_after_a_healthy_run() -> None:
    now = [0.0]
    starts = 0

    async def healthy_then_crash(ctx: RoleContext) -> None:
        nonlocal starts
        starts += 1
        now[0] += 1000.0  # each run "lasts" longer than reset_after_s
        raise RuntimeError("crash after a long healthy run")

    settings = fast_settings(max_restarts=2, reset_after_s=300.0)
    async with App(
        settings, roles=[spec("long", healthy_then_crash)], serve_http=False, clock=lambda: now[0]
    ) as app:
        await eventually(lambda: starts >= 8, message="many restarts without escalation")

    assert app.failure is None


async def test_supervisor_cancels_a_role_that_ignores_the_stop_after_the_timeout() -> None:
    async def stubborn(ctx: RoleContext) -> None:
        ctx.mark_ready()
        await asyncio.Event().wait()

    settings = fast_settings(shutdown_timeout_s=0.2)
    app = App(settings, roles=[spec("stubborn", stubborn)], serve_http=False)
    async with app:
        await app.wait_ready(5)
        began = time.monotonic()
    elapsed = time.monotonic() - began

    assert elapsed < 2.0
    assert _state(app, "stubborn") == "stopped"


async def test_supervisor_drain_mode_returns_when_roles_finish() -> None:
    done: list[str] = []

    async def finite(ctx: RoleContext) -> None:
        ctx.mark_ready()
        done.append(ctx.name)

    async with App(
        fast_settings(), roles=[spec("a", finite), spec("b", finite)], drain=True, serve_http=False
    ) as app:
        await asyncio.wait_for(app.wait(), 5)

    assert sorted(done) == ["a", "b"]


def test_resolve_roles_rejects_unknown_names_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown role 'nosuch'; valid roles: all, router"):
        resolve_roles(["router", "nosuch"])


def test_resolve_roles_all_excludes_the_mocks() -> None:
    names = [s.name for s in resolve_roles(["all"])]

    assert names == ["router", "status_updater", "outbox", "backfill", "merge", "gc", "webhooks"]


def _state(app: App, role: str) -> str:
    return next(s.state for s in app.stats() if s.role == role)


def test_registry_lines_agree_with_the_specs_they_load() -> None:
    for name, entry in CATALOGUE.items():
        spec = entry.load()
        assert spec.name == name
        assert (spec.run_once is not None) == entry.periodic, name
