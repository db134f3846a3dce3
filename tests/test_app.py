"""The composition root (app.py): roles resolved and checked, a context per role, the supervisor's
children, readiness and what roles publish, and `run_once` of a periodic role.

Roles are defined in the test and need no service; the supervision rules themselves are
tests/test_supervisor.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from chat4all_workers.app import App, run_once
from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError, RoleFailedError
from chat4all_workers.listening import Address
from chat4all_workers.resources import Need
from chat4all_workers.role import Restart, RoleContext, RoleSpec
from harness.waiting import eventually

pytestmark = pytest.mark.timeout(30)

RunFn = Callable[[RoleContext], Awaitable[None]]


def fast_settings(*, roles: dict[str, Any] | None = None, **supervisor: float) -> Settings:
    values = {
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "max_restarts": 3,
        "restart_window_s": 60.0,
        "shutdown_timeout_s": 2.0,
        **supervisor,
    }
    doc: dict[str, Any] = {"supervisor": values, "observability": {"metrics_port": 0}}
    if roles is not None:
        doc["roles"] = roles
    return Settings.load({}, doc)


def spec(name: str, run: RunFn, restart: Restart = Restart.PERMANENT, **more: Any) -> RoleSpec:
    return RoleSpec(name=name, needs=frozenset(), run=run, restart=restart, **more)


async def crash(ctx: RoleContext) -> None:
    raise RuntimeError(f"{ctx.name} crashed")


async def serve(ctx: RoleContext) -> None:
    ctx.mark_ready()
    await ctx.stopping.wait()


async def never_ready(ctx: RoleContext) -> None:
    await ctx.stopping.wait()


def state(app: App, role: str) -> str:
    return next(s.state for s in app.stats() if s.role == role)


# -- composition ----------------------------------------------------------------------------------


def test_app_resolves_role_names_through_its_registry() -> None:
    a, b = spec("a", serve), spec("b", serve)

    app = App(fast_settings(), roles=["b"], registry={"a": a, "b": b}, serve_http=False)

    assert app.specs == [b]


def test_app_takes_its_roles_from_the_settings_when_none_are_given() -> None:
    a, b = spec("a", serve), spec("b", serve)

    app = App(fast_settings(roles={"enabled": ["a"]}), registry={"a": a, "b": b})

    assert app.specs == [a]


def test_app_refuses_an_unknown_role_naming_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"roles \(roles argument\): unknown role 'nosuch'"):
        App(fast_settings(), roles=["nosuch"], registry={"a": spec("a", serve)})


def test_app_refuses_a_role_whose_settings_section_was_not_loaded() -> None:
    shared_only = Settings.load({})  # not roles.load_settings: no [router] section

    with pytest.raises(ValueError, match=r"role 'router' reads settings section \[router\]"):
        App(shared_only, roles=["router"])


def test_app_refuses_a_role_whose_required_setting_is_empty() -> None:
    needs_token = spec("sender", serve, required_settings=("whatsapp.access_token",))

    with pytest.raises(ConfigError, match=r"whatsapp.access_token \(default\): required by role"):
        App(fast_settings(), roles=[needs_token])


def test_app_needs_what_its_roles_need() -> None:
    cache = RoleSpec(name="cache", needs=frozenset({Need.REDIS}), run=serve)
    both = RoleSpec(name="both", needs=frozenset({Need.REDIS, Need.KAFKA}), run=serve)

    app = App(fast_settings(), roles=[cache, both])

    assert app.needs == {Need.REDIS, Need.KAFKA}


async def test_app_gives_each_role_a_context_of_its_own_sharing_the_stop() -> None:
    settings = fast_settings()
    async with App(
        settings, roles=[spec("a", serve), spec("b", serve)], drain=True, serve_http=False
    ) as app:
        await app.wait_ready(timeout_s=5)
        contexts = dict(app.contexts)

    assert [(name, ctx.name) for name, ctx in contexts.items()] == [("a", "a"), ("b", "b")]
    assert contexts["a"] is not contexts["b"]
    for ctx in contexts.values():
        assert ctx.settings is settings
        assert ctx.stopping is app.stopping
        assert ctx.shutdown is app.shutdown
        assert ctx.drain is True


async def test_app_applies_a_restart_type_from_the_settings() -> None:
    settings = fast_settings(roles={"restart": {"crashy": "temporary"}})
    async with App(settings, roles=[spec("crashy", crash)], serve_http=False) as app:
        await eventually(lambda: state(app, "crashy") == "failed", timeout_s=5, message="failed")
        (stats,) = app.stats()

    assert (stats.restart, stats.restarts_total) == ("temporary", 0)


async def test_app_marks_a_role_unready_when_its_run_ends() -> None:
    ran: list[bool] = []

    async def ready_then_done(ctx: RoleContext) -> None:
        ctx.mark_ready()
        ran.append(ctx.is_ready)

    async with App(
        fast_settings(), roles=[spec("once", ready_then_done, Restart.TEMPORARY)], serve_http=False
    ) as app:
        await eventually(
            lambda: ran == [True] and state(app, "once") == "stopped", timeout_s=5, message="ended"
        )
        ready = app.contexts["once"].is_ready

    assert ready is False


# -- readiness ------------------------------------------------------------------------------------


async def test_app_wait_ready_names_the_roles_that_are_not_ready() -> None:
    async with App(
        fast_settings(), roles=[spec("quick", serve), spec("slow", never_ready)], serve_http=False
    ) as app:
        with pytest.raises(TimeoutError, match=r"roles not ready after 0.2s: \['slow'\]"):
            await app.wait_ready(timeout_s=0.2)


async def test_app_readiness_shows_what_a_role_publishes_without_turning_unready() -> None:
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


async def test_app_is_unready_while_a_role_is_failed() -> None:
    settings = fast_settings(max_restarts=1)
    async with App(
        settings,
        roles=[spec("crashy", crash, Restart.TRANSIENT), spec("steady", serve)],
        serve_http=False,
    ) as app:
        await eventually(lambda: state(app, "crashy") == "failed", timeout_s=5, message="failed")
        ready, detail = await app.readiness()

    assert app.failure is None
    assert ready is False
    assert detail["roles"]["crashy"]["state"] == "failed"
    assert detail["roles"]["steady"]["state"] == "running"


async def test_app_serves_readyz_on_its_operations_port() -> None:
    async def publisher(ctx: RoleContext) -> None:
        ctx.publish("channels", lambda: {"whatsapp": {"state": "active"}})
        await serve(ctx)

    async with App(fast_settings(), roles=[spec("publisher", publisher)]) as app:
        await app.wait_ready(timeout_s=5)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{app.http_port}/readyz") as response,
        ):
            status, body = response.status, await response.json()

    assert status == 200
    assert body["ready"] is True
    assert body["channels"] == {"whatsapp": {"state": "active"}}
    assert body["roles"]["publisher"]["state"] == "running"


# -- waiting and stopping -------------------------------------------------------------------------


async def test_app_wait_raises_when_a_permanent_role_fails_past_its_intensity() -> None:
    settings = fast_settings(max_restarts=2)
    async with App(
        settings, roles=[spec("crashy", crash), spec("steady", serve)], serve_http=False
    ) as app:
        with pytest.raises(RoleFailedError, match="crashy") as failure:
            await asyncio.wait_for(app.wait(), 10)

    assert app.failure is failure.value
    assert {s.role: s.state for s in app.stats()} == {"crashy": "failed", "steady": "stopped"}


async def test_app_leaving_the_block_cancels_a_role_that_ignores_the_stop() -> None:
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
    assert state(app, "stubborn") == "stopped"


async def test_app_drain_mode_returns_when_roles_finish() -> None:
    done: list[str] = []

    async def finite(ctx: RoleContext) -> None:
        ctx.mark_ready()
        done.append(ctx.name)

    async with App(
        fast_settings(), roles=[spec("a", finite), spec("b", finite)], drain=True, serve_http=False
    ) as app:
        await asyncio.wait_for(app.wait(), 5)

    assert sorted(done) == ["a", "b"]


async def test_app_request_stop_before_it_runs_begins_the_shutdown() -> None:
    app = App(fast_settings(), roles=[spec("a", serve)], serve_http=False)

    app.request_stop()

    assert app.stopping.is_set()
    assert app.shutdown.begun


# -- periodic roles -------------------------------------------------------------------------------


class Periodic:
    """A periodic role that records its passes and its arming."""

    def __init__(self) -> None:
        self.passes: list[tuple[str, bool]] = []
        self.armed: list[str] = []

    async def one_pass(self, ctx: RoleContext) -> None:
        self.passes.append((ctx.name, ctx.drain))

    def arm(self, ctx: RoleContext) -> None:
        self.armed.append(ctx.name)

    def spec(self) -> RoleSpec:
        return RoleSpec(
            name="periodic",
            needs=frozenset(),
            run_once=self.one_pass,
            schedule=lambda settings: "0 0 1 1 *",  # once a year: never within a test
            arm=self.arm,
        )


async def test_app_arms_a_periodic_role_on_its_schedule() -> None:
    periodic = Periodic()
    async with App(fast_settings(), roles=[periodic.spec()], serve_http=False) as app:
        await app.wait_ready(timeout_s=5)

    assert periodic.armed == ["periodic"]
    assert periodic.passes == []  # the first pass waits for its time


async def test_run_once_runs_one_pass_of_a_periodic_role_in_drain_mode() -> None:
    periodic = Periodic()

    await run_once(fast_settings(), "periodic", registry={"periodic": periodic.spec()})

    assert periodic.passes == [("periodic", True)]


async def test_run_once_refuses_a_role_that_is_not_periodic() -> None:
    with pytest.raises(ConfigError, match=r"run-once \(argv\): role 'steady' is not periodic"):
        await run_once(fast_settings(), "steady", registry={"steady": spec("steady", serve)})


class Greeter:
    """A role that listens (`RoleSpec.listens`) and answers each connection with its run's
    number; its first run crashes after its first answer."""

    def __init__(self) -> None:
        self.runs = 0
        self.address = Address("127.0.0.1", 0, "greeter.host, greeter.port")

    def spec(self) -> RoleSpec:
        return spec("greeter", self.run, listens=lambda settings: self.address)

    async def run(self, ctx: RoleContext) -> None:
        self.runs += 1
        run, answered = self.runs, asyncio.Event()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"run %d\n" % run)
            await writer.drain()
            writer.close()
            answered.set()

        async with ctx.sockets(self.address) as (sock,):
            server = await asyncio.start_server(greet, sock=sock)
            async with server:
                ctx.mark_ready()
                if run == 1:
                    await answered.wait()
                    raise RuntimeError("greeter crashed")
                await ctx.stopping.wait()


async def ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()


async def test_app_binds_a_role_port_once_and_a_restarted_role_serves_the_same() -> None:
    greeter = Greeter()
    async with App(fast_settings(), roles=[greeter.spec()], serve_http=False) as app:
        listening = app.contexts["greeter"].listening
        assert listening is not None
        port = listening.port
        first = await ask(port)
        # The crash closed the first run's server; a connection now waits in the process's
        # backlog until the restarted role serves the same socket.
        second = await ask(port)

    assert (first, second) == (b"run 1\n", b"run 2\n")
    assert greeter.runs == 2
    with pytest.raises(ConnectionRefusedError):
        await ask(port)  # stopped: the port is closed
