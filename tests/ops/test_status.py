"""`status` reads a deployment from the outside and says what is wrong."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.app import App
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.status import collect_status, render
from harness import REPO
from harness.deployment import Deployment
from harness.waiting import eventually
from tests.support import produce

pytestmark = pytest.mark.stack


async def seed_trouble(deployment: Deployment) -> None:
    """Two stale outbox events, a stuck merge, a fallback backlog, a dead item, a DLQ record."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for _ in range(2):
            await conn.execute(
                """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload,
                                              created_at)
                   VALUES ($1, 'conversation', '1', 'message.created', '{}',
                           now() - interval '1 hour')""",
                uuid.uuid4(),
            )
        await conn.execute(
            """INSERT INTO files (id, filename, status, updated_at)
               VALUES ($1, 'a.pdf', 'MERGING', now() - interval '3 hours')""",
            uuid.uuid4(),
        )
    finally:
        await conn.close()
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        queue = f"{deployment.redis_prefix}fallback:message_queue"
        await redis.rpush(queue, b"{}", b"{}", b"{}")
        await redis.rpush(f"{queue}:dead", b"junk")
    finally:
        await redis.aclose()
    settings = deployment.settings()
    producer = Producer(settings.kafka, settings.breaker)
    await producer.start()
    try:
        await dead_letter(
            producer,
            dlq_topic=settings.topics.dlq,
            value=b"x",
            key=None,
            source="router",
            reason="r",
            error_type="e",
            attempts=1,
            original_topic=settings.topics.message_processing,
            metrics=None,
        )
    finally:
        await producer.stop()


async def test_status_reports_backlogs_and_calls_them_unhealthy(deployment: Deployment) -> None:
    await seed_trouble(deployment)

    report = await collect_status(deployment.settings(), workers=[])

    assert report.errors == {}
    assert report.outbox_pending == 2
    assert report.outbox_oldest_age_s is not None
    assert report.outbox_oldest_age_s > 3000
    assert report.fallback_queue == 3
    assert report.fallback_dead == 1
    assert report.dlq_depth == 1
    assert report.dlq_unreplayed == 1
    assert report.files_stuck_merging == 1
    assert not report.healthy
    assert any("MERGING" in p for p in report.problems)


async def test_status_of_a_quiet_deployment_is_healthy(deployment: Deployment) -> None:
    report = await collect_status(deployment.settings(), workers=[])

    assert report.problems == []
    assert (report.outbox_pending, report.fallback_queue, report.dlq_depth) == (0, 0, 0)


async def test_status_cli_prints_json_and_exits_1_when_unhealthy(deployment: Deployment) -> None:
    await seed_trouble(deployment)
    env = deployment.environ()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chat4all_workers",
        "status",
        "--json",
        "--workers",
        "",
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)

    assert proc.returncode == 1, stderr.decode()
    body = json.loads(stdout)
    assert body["healthy"] is False
    assert body["fallback_queue"] == 3


async def test_status_names_a_paused_channel_and_calls_it_unhealthy(
    deployment: Deployment,
) -> None:
    # A router whose WhatsApp token expired: the channel pauses, the worker stays ready.
    settings = deployment.settings(mocks={"token_expired": True})
    await produce(
        deployment.stack,
        deployment.topics["message_processing"],
        [(b"conversation:1", orjson.dumps(whatsapp_message(1)))],
    )
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as mocks,
        App(settings, roles=["router"]) as workers,
    ):
        await mocks.wait_ready(10)
        await workers.wait_ready(30)

        async def paused() -> bool:
            _, body = await workers.readiness()
            # Listed once the router met the account's first message.
            account = body["accounts"].get("whatsapp/default", {})
            return bool(account.get("state") == "paused")

        await eventually(paused, message="whatsapp paused")
        url = f"http://127.0.0.1:{workers.http_port}"
        report = await collect_status(settings, workers=[url])
        lines: list[str] = []
        render(report, write=lines.append)

    (worker,) = report.workers
    assert worker.ready  # paused, yet ready: the other accounts and the rest still work
    assert worker.accounts["whatsapp/default"]["state"] == "paused"
    assert not report.healthy
    (problem,) = [p for p in report.problems if "paused" in p]
    assert "account whatsapp/default paused since" in problem
    assert "HTTP 401 (190/463)" in problem
    assert "sending accounts: 1 (1 paused: whatsapp/default)" in "".join(lines)


def whatsapp_message(conversation: int) -> dict[str, object]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "payload": {"type": "text", "content": "hello"},
        "channels": ["whatsapp"],
        "recipients": {"whatsapp": "+5511999990000"},
    }
