"""What a role is (role.py): its context (ready, publish, report), the validation of its spec, and
outages waited out while bugs are not (`outlast_outages`, `is_outage`; the fault tests in
tests/e2e stop the real services, these pin the rules)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.exceptions as redis_errors

from chat4all_workers.config import Settings
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Resources
from chat4all_workers.role import (
    RoleContext,
    RoleReport,
    RoleSpec,
    describe_outage,
    is_outage,
    outlast_outages,
)
from harness.deployment import free_port
from harness.waiting import eventually

pytestmark = pytest.mark.timeout(30)


def context(settings: Settings | None = None) -> RoleContext:
    settings = settings or Settings.load({})
    metrics = Metrics()
    return RoleContext("example", settings, Resources(settings, metrics), metrics, asyncio.Event())


async def refused_connection() -> None:
    """A real outage: a TCP connection to a port nobody listens on."""
    _, writer = await asyncio.open_connection("127.0.0.1", free_port())
    writer.close()


async def nothing(ctx: RoleContext) -> None:
    return None


# -- the context ----------------------------------------------------------------------------------


async def test_role_context_is_ready_once_marked_and_unready_again() -> None:
    ctx = context()
    before = ctx.is_ready

    ctx.mark_ready()
    ready = ctx.is_ready
    ctx.mark_unready()

    assert (before, ready, ctx.is_ready) == (False, True, False)


async def test_role_context_wait_ready_returns_once_marked() -> None:
    ctx = context()
    waiting = asyncio.ensure_future(ctx.wait_ready())

    ctx.mark_ready()

    await asyncio.wait_for(waiting, 5)


async def test_role_context_published_describes_each_section_when_asked() -> None:
    ctx = context()
    state = {"whatsapp": "active"}
    ctx.publish("channels", lambda: state)
    ctx.publish("queue", lambda: {"length": 3})

    state["whatsapp"] = "paused"
    published = ctx.published()

    assert published == {"channels": {"whatsapp": "paused"}, "queue": {"length": 3}}


async def test_role_context_publishing_a_section_again_replaces_it() -> None:
    ctx = context()
    ctx.publish("channels", lambda: {"from": "the first run"})

    ctx.publish("channels", lambda: {"from": "the restarted run"})

    assert ctx.published() == {"channels": {"from": "the restarted run"}}


async def test_role_context_report_is_how_the_role_describes_its_work() -> None:
    ctx = context()
    before = ctx.reporter

    ctx.report(lambda: RoleReport(processed_total=7))

    assert before is None
    assert ctx.reporter is not None
    assert ctx.reporter().processed_total == 7


async def test_role_context_shutdown_deadline_has_the_configured_budget_and_is_not_begun() -> None:
    ctx = context(Settings.load({}, {"supervisor": {"shutdown_timeout_s": 7.5}}))

    assert (ctx.shutdown.budget_s, ctx.shutdown.begun) == (7.5, False)


# -- the spec -------------------------------------------------------------------------------------


def test_role_spec_takes_exactly_one_of_run_and_run_once() -> None:
    with pytest.raises(ValueError, match="role both: give exactly one of run or run_once"):
        RoleSpec("both", frozenset(), run=nothing, run_once=nothing, schedule=lambda s: "* * * * *")
    with pytest.raises(ValueError, match="role neither: give exactly one of run or run_once"):
        RoleSpec("neither", frozenset())


def test_role_spec_of_a_periodic_role_needs_a_schedule() -> None:
    with pytest.raises(ValueError, match="role gc: a periodic role needs a schedule"):
        RoleSpec("gc", frozenset(), run_once=nothing)


# -- outages --------------------------------------------------------------------------------------


def test_is_outage_knows_each_client_library_and_looks_inside_task_group_errors() -> None:
    refused = ConnectionRefusedError(111, "refused")
    assert is_outage(refused)
    assert is_outage(redis_errors.ConnectionError("gone"))
    assert is_outage(asyncpg.CannotConnectNowError("starting up"))
    # What a pooled connection raises when the server was killed under it (asyncpg#1069).
    assert is_outage(asyncpg.InternalClientError("cannot switch to state 15; another operation"))
    assert is_outage(ExceptionGroup("tasks", [refused, redis_errors.TimeoutError("slow")]))
    assert not is_outage(ValueError("a bug"))
    assert not is_outage(ExceptionGroup("tasks", [refused, KeyError("a bug")]))


def test_an_outage_of_a_task_group_is_described_by_its_own_errors() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed")
    nested = ExceptionGroup("tasks", [ExceptionGroup("inner", [refused]), TimeoutError("slow")])

    assert describe_outage(ExceptionGroup("tasks", [refused])) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    )
    assert describe_outage(nested) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed (and 1 more)"
    )
    assert describe_outage(redis_errors.ConnectionError("gone")) == "ConnectionError: gone"


async def test_outlast_outages_retries_an_outage_until_the_call_succeeds() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            await refused_connection()
        return 42

    assert await outlast_outages(context(), flaky, what="the test call") == 42
    assert calls == 3


async def test_outlast_outages_lets_a_bug_through_at_once() -> None:
    calls = 0

    async def buggy() -> None:
        nonlocal calls
        calls += 1
        raise ExceptionGroup("tasks", [ConnectionRefusedError(111, "refused"), KeyError("x")])

    with pytest.raises(ExceptionGroup):
        await outlast_outages(context(), buggy, what="the test call")
    assert calls == 1


async def test_outlast_outages_once_stopping_lets_the_outage_through() -> None:
    ctx = context()
    ctx.stopping.set()

    async def down() -> None:
        raise redis_errors.ConnectionError("gone")

    with pytest.raises(redis_errors.ConnectionError):
        await outlast_outages(ctx, down, what="the test call")


async def test_outlast_outages_lets_the_outage_through_once_the_process_stops_mid_outage() -> None:
    ctx = context()
    calls = 0

    async def unreachable() -> None:
        nonlocal calls
        calls += 1
        await refused_connection()

    waiting = asyncio.ensure_future(outlast_outages(ctx, unreachable, what="the test call"))
    await eventually(lambda: calls >= 2, timeout_s=10, message="a retry after an outage")
    ctx.stopping.set()

    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(waiting, 5)
