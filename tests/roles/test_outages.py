"""Outages are waited out, bugs are not: `outlast_outages` and `is_outage` (the fault tests in
tests/e2e stop the real services; these pin the rules)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.exceptions as redis_errors

from chat4all_workers.config import Settings
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Resources
from chat4all_workers.role import RoleContext, is_outage, outlast_outages


def context() -> RoleContext:
    settings = Settings.load({})
    metrics = Metrics()
    return RoleContext("example", settings, Resources(settings, metrics), metrics, asyncio.Event())


def test_is_outage_knows_each_client_library_and_looks_inside_task_group_errors() -> None:
    refused = ConnectionRefusedError(111, "refused")
    assert is_outage(refused)
    assert is_outage(redis_errors.ConnectionError("gone"))
    assert is_outage(asyncpg.CannotConnectNowError("starting up"))
    assert is_outage(ExceptionGroup("tasks", [refused, redis_errors.TimeoutError("slow")]))
    assert not is_outage(ValueError("a bug"))
    assert not is_outage(ExceptionGroup("tasks", [refused, KeyError("a bug")]))


async def test_an_outage_is_retried_until_the_call_succeeds() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError(111, "refused")
        return 42

    assert await outlast_outages(context(), flaky, what="the test call") == 42
    assert calls == 3


async def test_a_bug_goes_through_at_once() -> None:
    calls = 0

    async def buggy() -> None:
        nonlocal calls
        calls += 1
        raise ExceptionGroup("tasks", [ConnectionRefusedError(111, "refused"), KeyError("x")])

    with pytest.raises(ExceptionGroup):
        await outlast_outages(context(), buggy, what="the test call")
    assert calls == 1


async def test_once_stopping_the_outage_propagates() -> None:
    ctx = context()
    ctx.stopping.set()

    async def down() -> None:
        raise redis_errors.ConnectionError("gone")

    with pytest.raises(redis_errors.ConnectionError):
        await outlast_outages(ctx, down, what="the test call")
