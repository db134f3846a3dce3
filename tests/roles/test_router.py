"""The router against real Kafka, Redis, PostgreSQL and S3, sending to a fake provider over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import signal
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from miniopy_async.api import Minio

from chat4all_workers.channels import build_adapters
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.roles import REGISTRY
from chat4all_workers.roles.base import RoleContext
from chat4all_workers.roles.consuming import consume
from chat4all_workers.roles.router import Router
from chat4all_workers.supervisor import Supervisor
from tests.support import (
    Deployment,
    FakeChannelApi,
    WorkerProcess,
    eventually,
    produce,
    read_topic,
)

pytestmark = pytest.mark.stack


def message(
    conversation: int,
    content: str,
    *,
    channels: Any = ("whatsapp",),
    recipients: dict[str, str] | None = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "sender_username": "ana",
        "payload": payload or {"type": "text", "content": content},
        "channels": list(channels) if not isinstance(channels, str) else channels,
        "recipients": recipients
        if recipients is not None
        else {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"},
        "created_at": "2026-11-28T10:30:00Z",
    }


def record(doc: dict[str, Any] | bytes) -> tuple[bytes, bytes]:
    if isinstance(doc, bytes):
        return b"conversation:0", doc
    return f"conversation:{doc['conversation_id']}".encode(), orjson.dumps(doc)


async def route_all(deployment: Deployment, channel: FakeChannelApi, **overrides: Any) -> None:
    settings = deployment.settings(
        whatsapp={"base_url": channel.base_url},
        instagram={"base_url": channel.base_url},
        router={"retry_base_s": 0.01, "retry_cap_s": 0.05, **overrides},
    )
    async with Supervisor(settings, roles=["router"], drain=True, serve_http=False) as sup:
        await asyncio.wait_for(sup.wait(), 120)
    assert [s.restarts_total for s in sup.stats()] == [0]


async def statuses(deployment: Deployment) -> list[dict[str, Any]]:
    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    return [orjson.loads(r.value) for r in records]


async def dead_letters(deployment: Deployment) -> list[dict[str, Any]]:
    records = await read_topic(deployment.stack, deployment.topics["dlq"])
    return [
        {"value": r.value, **{k: v.decode() for k, v in r.headers if k.startswith("dlq.")}}
        for r in records
    ]


async def test_router_sends_or_dead_letters_every_record_and_keeps_conversation_order(
    deployment: Deployment,
) -> None:
    valid = [message(c, f"c{c}-m{n}") for n in range(5) for c in range(6)]
    both = message(9, "both channels", channels="all")
    rejected = message(10, "to a bad number", recipients={"whatsapp": "+invalid"})
    flaky = message(11, "flaky then fine", recipients={"whatsapp": "+flaky"})
    half = message(
        12,
        "one fails",
        channels=["whatsapp", "instagram"],
        recipients={"whatsapp": "+5512", "instagram": "invalid-ig"},
    )
    malformed = [
        b"{not json",
        orjson.dumps({"conversation_id": 1}),
        orjson.dumps(message(13, "x", channels=["telegram"])),
    ]
    inputs = [*valid, both, rejected, flaky, half]
    await produce(
        deployment.stack,
        deployment.topics["message_processing"],
        [record(d) for d in inputs] + [record(m) for m in malformed],
    )

    async with FakeChannelApi() as channel:
        channel.fail_first["+flaky"] = 2
        await route_all(deployment, channel)

    sent = channel.texts()
    for c in range(6):
        assert [t for t in sent if t.startswith(f"c{c}-")] == [f"c{c}-m{n}" for n in range(5)]
    assert sorted(channel.texts("instagram")) == ["both channels"]
    assert sent.count("both channels") == 2
    assert "flaky then fine" in sent
    assert "one fails" in channel.texts("whatsapp")
    assert "to a bad number" not in sent
    assert len(sent) == len(set(zip(sent, [c.channel for c in channel.calls], strict=True)))

    dlq = await dead_letters(deployment)
    reasons = {d["value"]: d for d in dlq}
    assert len(dlq) == 5  # 3 malformed + rejected + half
    assert all(d["dlq.source"] == "router" and d["dlq.reason"] for d in dlq)
    assert reasons[b"{not json"]["dlq.error_type"] == "invalid_record"
    assert 'unknown channel "telegram"' in reasons[malformed[2]]["dlq.reason"]
    assert reasons[orjson.dumps(rejected)]["dlq.error_type"] == "provider_rejected"
    assert "instagram" in reasons[orjson.dumps(half)]["dlq.reason"]

    updates = await statuses(deployment)
    by_message = {(u["message_id"], u["channel"]): u["new_status"] for u in updates}
    for doc in valid:
        assert by_message[(doc["message_id"], "whatsapp")] == "SENT"
    assert by_message[(rejected["message_id"], "whatsapp")] == "FAILED"
    assert by_message[(half["message_id"], "whatsapp")] == "SENT"
    assert by_message[(half["message_id"], "instagram")] == "FAILED"
    assert by_message[(flaky["message_id"], "whatsapp")] == "SENT"


async def test_router_dead_letters_after_retries_are_exhausted(deployment: Deployment) -> None:
    doomed = message(1, "never answers well", recipients={"whatsapp": "+down"})
    await produce(deployment.stack, deployment.topics["message_processing"], [record(doomed)])

    async with FakeChannelApi() as channel:
        channel.fail_first["+down"] = 100
        await route_all(deployment, channel)

    (dead,) = await dead_letters(deployment)
    assert dead["dlq.error_type"] == "retries_exhausted"
    assert dead["dlq.attempts"] == "3"
    assert dead["value"] == orjson.dumps(doomed)
    assert channel.calls == []


async def test_router_redelivery_sends_nothing_twice(deployment: Deployment) -> None:
    docs = [message(c, f"once-{c}") for c in range(20)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )

    async with FakeChannelApi() as channel:
        await route_all(deployment, channel)
        # The same records again, as after a crash before the commit: a fresh consumer group.
        again = Deployment(**{**deployment.__dict__, "group": f"{deployment.group}-again"})
        await route_all(again, channel)

    assert sorted(channel.texts()) == sorted(d["payload"]["content"] for d in docs)
    updates = await statuses(deployment)
    assert sum(1 for u in updates if u["new_status"] == "SENT") == 40  # re-emitted, not re-sent


async def test_router_survives_kill_9_without_losing_or_repeating_a_send(
    deployment: Deployment, tmp_path: Path
) -> None:
    docs = [message(c, f"k{c}-{n}") for n in range(10) for c in range(40)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    async with FakeChannelApi(latency_s=0.05) as channel:
        env = deployment.environ(
            whatsapp={"base_url": channel.base_url, "timeout_s": 2.0}, router={"retry_cap_s": 0.5}
        )
        first = WorkerProcess("router", env, tmp_path / "first.log")
        await first.start()
        try:
            await eventually(lambda: len(channel.calls) >= 60, timeout_s=60, message="sends")
            first.signal(signal.SIGKILL)
            assert await first.wait(10) == -signal.SIGKILL
        finally:
            await first.stop()
        before_restart = len(channel.calls)
        await route_all(deployment, channel, retry_cap_s=0.5)

    texts = channel.texts()
    unknown = [
        orjson.loads(d["value"])["payload"]["content"]
        for d in await dead_letters(deployment)
        if d["dlq.error_type"] == "delivery_unknown"
    ]
    assert before_restart < len(docs)
    assert len(texts) == len(set(texts)), "a message was sent twice"
    # Every message was sent once, or (killed mid-send) dead-lettered as of unknown outcome.
    assert set(texts) | set(unknown) == {d["payload"]["content"] for d in docs}
    for c in range(40):
        assert [t for t in texts if t.startswith(f"k{c}-")] == sorted(
            (t for t in texts if t.startswith(f"k{c}-")), key=lambda t: int(t.split("-")[1])
        )


async def test_router_handler_bug_on_one_record_lets_the_other_sends_finish_then_restarts(
    deployment: Deployment,
) -> None:
    """The real router role, composed with a bug on one chosen record (its first delivery):
    the sends in flight finish, nothing is dead-lettered as of unknown outcome, the role is
    restarted and the chosen record is then delivered too."""
    docs = [message(c, f"bug-{c}") for c in range(30)]
    chosen = docs[7]["message_id"]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    entered = 0
    raised = False

    async def run_router_with_a_bug(ctx: RoleContext) -> None:
        router = Router(ctx, build_adapters(ctx.settings, ctx.resources.http_client()))

        async def handle(consumed: ConsumedRecord) -> None:
            nonlocal entered, raised
            entered += 1
            if not raised and orjson.loads(consumed.value or b"{}")["message_id"] == chosen:
                await eventually(lambda: entered >= 20, message="other sends under way")
                raised = True
                raise ZeroDivisionError("a bug in the handler")
            await router.handle(consumed)

        await consume(ctx, topic=ctx.settings.topics.message_processing, handler=handle)

    buggy = dataclasses.replace(REGISTRY["router"], run=run_router_with_a_bug)
    async with FakeChannelApi(latency_s=0.5) as channel:
        settings = deployment.settings(
            whatsapp={"base_url": channel.base_url, "timeout_s": 2.0},
            router={"retry_base_s": 0.01, "retry_cap_s": 0.05},
            supervisor={"backoff_base_s": 0.05, "backoff_cap_s": 0.1},
        )
        async with Supervisor(settings, roles=[buggy], drain=True, serve_http=False) as sup:
            await asyncio.wait_for(sup.wait(), 120)

    texts = channel.texts()
    assert raised
    assert [s.restarts_total for s in sup.stats()] == [1]
    assert sorted(texts) == sorted(d["payload"]["content"] for d in docs)  # each once
    assert await dead_letters(deployment) == []  # no delivery_unknown, nothing else either


async def test_router_waits_for_a_redis_connection_when_more_sends_are_in_flight(
    deployment: Deployment,
) -> None:
    # More conversations in flight than Redis connections: commands queue for a connection
    # instead of raising MaxConnectionsError (which crashed the role under load).
    docs = [message(c, f"pool-{c}") for c in range(40)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )

    async with FakeChannelApi(latency_s=0.02) as channel:
        settings = deployment.settings(
            whatsapp={"base_url": channel.base_url},
            redis={"max_connections": 2},
        )
        async with Supervisor(settings, roles=["router"], drain=True, serve_http=False) as sup:
            await asyncio.wait_for(sup.wait(), 60)

    assert [s.restarts_total for s in sup.stats()] == [0]
    assert sorted(channel.texts()) == sorted(d["payload"]["content"] for d in docs)


async def test_router_sends_a_completed_file_and_fails_a_missing_one(
    deployment: Deployment, s3_client: Minio
) -> None:
    ready, missing = uuid.uuid4(), uuid.uuid4()
    key = f"files/{ready}/report.pdf"
    await s3_client.put_object(deployment.bucket, key, io.BytesIO(b"%PDF-1.7"), 8)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        await conn.execute(
            """INSERT INTO files (id, filename, status, storage_key, mime_type)
               VALUES ($1, 'report.pdf', 'COMPLETED', $2, 'application/pdf'),
                      ($3, 'gone.pdf', 'UPLOADING', NULL, NULL)""",
            ready,
            key,
            missing,
        )
    finally:
        await conn.close()
    good = message(1, "", payload={"type": "file", "file_id": str(ready)})
    bad = message(2, "", payload={"type": "file", "file_id": str(missing)})
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(good), record(bad)]
    )

    async with FakeChannelApi() as channel:
        await route_all(deployment, channel)

    (call,) = channel.calls
    assert call.body["type"] == "document"
    assert call.body["document"]["filename"] == "report.pdf"
    assert key in call.body["document"]["link"]
    (dead,) = await dead_letters(deployment)
    assert "not COMPLETED" in dead["dlq.reason"]
