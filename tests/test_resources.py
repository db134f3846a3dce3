"""Shared resources: opened only for what the roles need, probed for /readyz."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from chat4all_workers.app import App
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, Resources
from chat4all_workers.role import RoleContext, RoleSpec
from chat4all_workers.storage.s3 import new_client
from harness.deployment import Deployment, free_port, settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.support import own_redis

pytestmark = pytest.mark.stack

DEAD = "127.0.0.1:1"  # nothing listens on port 1: any connection attempt fails at once


async def idle(ctx: RoleContext) -> None:
    ctx.mark_ready()
    await ctx.stopping.wait()


def role_needing(*needs: Need) -> RoleSpec:
    return RoleSpec(name="probe", needs=frozenset(needs), run=idle)


async def test_resources_gc_only_opens_no_kafka_connection(stack: StackEndpoints) -> None:
    settings = settings_for(stack, kafka={"bootstrap_servers": DEAD})

    async with App(settings, roles=["gc"], serve_http=False) as app:
        assert app.resources is not None
        assert app.resources.producer is None
        assert app.resources.pg is not None
        assert app.resources.s3 is not None


async def test_resources_backfill_only_opens_no_postgres_pool(stack: StackEndpoints) -> None:
    settings = settings_for(stack, database_url=f"postgresql://x:y@{DEAD}/none")

    async with App(settings, roles=["backfill"], serve_http=False) as app:
        assert app.resources is not None
        assert app.resources.pg is None
        assert app.resources.redis is not None
        assert app.resources.producer is not None


async def test_resources_accounts_opens_postgres_and_the_directory_shown_in_readyz(
    deployment: Deployment,
) -> None:
    settings = deployment.settings()

    async with (
        App(settings, roles=[role_needing(Need.ACCOUNTS)]) as app,
        aiohttp.ClientSession() as http,
    ):
        await app.wait_ready(10)
        assert app.resources is not None
        assert app.http_port is not None
        default = app.resources.accounts().find("whatsapp", None)
        status, body = await readyz(http, app.http_port)

    assert app.resources.pg is not None
    assert default is not None
    assert default.provider_id == "1000"
    assert status == 200
    accounts = body["accounts_directory"]
    assert isinstance(accounts, dict)
    assert accounts["accounts"]["whatsapp"] == {"enabled": 1, "disabled": 0}
    assert accounts["listening"] is True


async def readyz(session: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, object]]:
    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.json()


async def test_readyz_turns_503_while_a_dependency_is_down_and_200_when_back(
    stack: StackEndpoints, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = settings_for(stack, redis={"url": f"redis://127.0.0.1:{port}/0"})
    with own_redis(port, tmp_path) as first:
        await eventually(lambda: _accepts(port), message="redis up")
        async with (
            App(settings, roles=[role_needing(Need.REDIS)]) as app,
            aiohttp.ClientSession() as http,
        ):
            await app.wait_ready(10)
            assert app.http_port is not None
            status, body = await readyz(http, app.http_port)
            assert (status, body["dependencies"]) == (200, {"redis": True})

            first.terminate()
            first.wait(10)
            with caplog.at_level(logging.INFO, logger="chat4all_workers.resources"):
                await eventually(lambda: _status_is(http, app.http_port, 503), message="503")
                with own_redis(port, tmp_path):
                    await eventually(lambda: _status_is(http, app.http_port, 200), message="200")
            assert [s.restarts_total for s in app.stats()] == [0]

    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.endswith("resources")]
    assert said[0][0] == "WARNING"
    assert said[0][1].startswith("redis: not ready: ConnectionError: ")
    assert said[1:] == [("INFO", "redis: answers again")]


async def test_probe_says_once_why_a_dependency_refuses(
    stack: StackEndpoints, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 turning down our credentials at run time: /readyz says false, and the log says why."""
    settings = settings_for(stack, s3={"secret_key": "not-the-secret"})
    resources = Resources(settings, Metrics(), s3=new_client(settings.s3))
    try:
        with caplog.at_level(logging.INFO, logger="chat4all_workers.resources"):
            first = await resources.probe()
            second = await resources.probe()
    finally:
        await resources.s3_client().close_session()

    assert first == second == {"s3": False}
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [("WARNING", "s3: not ready: AccessDenied: Access denied")]


async def test_metrics_endpoint_exposes_supervisor_metrics(stack: StackEndpoints) -> None:
    settings = settings_for(stack)
    async with App(settings, roles=[role_needing()]) as app, aiohttp.ClientSession() as http:
        await app.wait_ready(10)
        app.metrics.supervisor_restarts.inc({"role": "probe", "reason": "test"})
        async with http.get(f"http://127.0.0.1:{app.http_port}/metrics") as response:
            text = await response.text()
        async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as response:
            health = response.status

    assert 'supervisor_restarts_total{reason="test",role="probe"} 1' in text
    assert "supervisor_role_state" in text
    assert health == 200


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def _status_is(http: aiohttp.ClientSession, port: int | None, expected: int) -> bool:
    assert port is not None
    status, _ = await readyz(http, port)
    return status == expected
