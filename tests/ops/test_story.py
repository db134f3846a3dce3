"""`chat4all-workers message ID`: the whole story of one message, from every source, read-only.

Each test sets the state up as the workers would have left it (a row and its event written by
`send`, history rows, markers, DLQ records), then reads it back through the CLI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.partitioning import partition_for
from chat4all_workers.kafka.producer import Producer
from harness.deployment import Deployment
from tests.ops.cli_support import CliRun, run_cli
from tests.support import produce

pytestmark = pytest.mark.stack

CONVERSATION = 4242


async def sent_message(deployment: Deployment, *channels: str) -> str:
    """A message written by `send` (its row and its outbox event), marked published."""
    args = ["send", "--text", "hi", "--conversation-id", str(CONVERSATION)]
    for channel in channels:
        args += ["--channel", channel]
    result = await asyncio.to_thread(run_cli, args, deployment.environ())
    assert result.code == 0, result.err
    conn = await asyncpg.connect(deployment.database_url)
    try:
        await conn.execute("UPDATE outbox_events SET published = true, published_at = now()")
    finally:
        await conn.close()
    return result.lines[0]


async def record_statuses(
    deployment: Deployment, message_id: str, rows: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """History rows as the status updater writes them, and the row's status."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for channel, status, details in rows:
            await conn.execute(
                """INSERT INTO message_status_history (message_id, status, channel, details)
                   VALUES ($1, $2, $3, $4::jsonb)""",
                uuid.UUID(message_id),
                status,
                channel,
                orjson.dumps(details).decode(),
            )
        await conn.execute(
            "UPDATE messages SET status = $2 WHERE id = $1", uuid.UUID(message_id), rows[-1][1]
        )
    finally:
        await conn.close()


async def set_keys(deployment: Deployment, values: dict[str, str]) -> None:
    client = aioredis.from_url(deployment.stack.redis_url)
    try:
        for key, value in values.items():
            await client.set(deployment.redis_prefix + key, value, ex=86_000)
    finally:
        await client.aclose()


async def story(deployment: Deployment, message_id: str) -> tuple[CliRun, dict[str, Any]]:
    """`message ID` as text and as JSON (no worker to ask about paused channels)."""
    args = ["message", message_id, "--workers", ""]
    text = await asyncio.to_thread(run_cli, args, deployment.environ())
    as_json = await asyncio.to_thread(run_cli, [*args, "--json"], deployment.environ())
    assert as_json.code == text.code
    return text, orjson.loads(as_json.out)


async def test_message_tells_the_story_of_a_read_message(deployment: Deployment) -> None:
    message_id = await sent_message(deployment, "whatsapp", "instagram")
    wamid, mid = "wamid.HBgLNTUxMTk", "mid.aWdfZAG1"
    await record_statuses(
        deployment,
        message_id,
        [
            ("whatsapp", "SENT", {"provider_message_id": wamid}),
            ("instagram", "SENT", {"provider_message_id": mid}),
            ("whatsapp", "DELIVERED", {"provider_message_id": wamid}),
            ("whatsapp", "READ", {"provider_message_id": wamid}),
            ("instagram", "READ", {"provider_message_id": mid}),
        ],
    )
    index = orjson.dumps({"message_id": message_id, "conversation_id": CONVERSATION}).decode()
    await set_keys(
        deployment,
        {
            f"message:dedup:{message_id}:whatsapp": f"sent:{wamid}",
            f"message:dedup:{message_id}:instagram": f"sent:{mid}",
            f"message:provider:instagram:{mid}": index,
        },
    )

    text, doc = await story(deployment, message_id)

    assert text.code == 0
    assert "  status        READ\n" in text.out
    assert f"  whatsapp   sent      sent: the provider has it as {wamid}" in text.out
    assert f"  {mid} -> this message (its read receipt finds it)" in text.out
    assert [(h["channel"], h["status"]) for h in doc["history"]] == [
        ("whatsapp", "SENT"),
        ("instagram", "SENT"),
        ("whatsapp", "DELIVERED"),
        ("whatsapp", "READ"),
        ("instagram", "READ"),
    ]
    assert {m["channel"]: m["provider_message_id"] for m in doc["markers"]} == {
        "whatsapp": wamid,
        "instagram": mid,
    }
    assert doc["dlq"]["records"] == []
    assert doc["dlq"]["complete"] is True
    (event,) = doc["outbox"]
    assert (event["event_type"], event["published"]) == ("message.created", True)


async def test_message_shows_a_dead_lettered_message_with_its_dlq_reason(
    deployment: Deployment,
) -> None:
    message_id = await sent_message(deployment, "whatsapp")
    reason = "whatsapp: HTTP 400 (131026): (#131026) Message undeliverable"
    topic = deployment.topics["message_processing"]
    await record_statuses(deployment, message_id, [("whatsapp", "FAILED", {"reason": reason})])
    await set_keys(
        deployment,
        {f"message:dedup:{message_id}:whatsapp": f"failed:provider_rejected:{topic}:2:17"},
    )
    key = f"conversation:{CONVERSATION}".encode()
    other = orjson.dumps({"message_id": str(uuid.uuid4()), "conversation_id": CONVERSATION})
    await produce(deployment.stack, deployment.topics["dlq"], [(key, other)])  # same partition
    settings = deployment.settings()
    producer = Producer(settings.kafka, settings.breaker)
    await producer.start()
    try:
        await dead_letter(
            producer,
            dlq_topic=deployment.topics["dlq"],
            value=orjson.dumps({"message_id": message_id, "conversation_id": CONVERSATION}),
            key=key,
            source="router",
            reason=reason,
            error_type="provider_rejected",
            attempts=1,
            original_topic=topic,
            original_partition=2,
            original_offset=17,
            metrics=None,
        )
    finally:
        await producer.stop()

    text, doc = await story(deployment, message_id)

    assert text.code == 0
    (record,) = doc["dlq"]["records"]
    assert (record["error_type"], record["reason"], record["attempts"]) == (
        "provider_rejected",
        reason,
        "1",
    )
    assert record["original"] == f"{topic}:2:17"
    assert doc["dlq"]["partition"] == partition_for(key, 4)
    assert doc["dlq"]["examined"] == 2  # that partition's records since the message, no more
    assert f"  offset {record['offset']}  " in text.out
    assert f"      {reason}\n" in text.out
    assert f"failed: provider_rejected, given up by the record at {topic}:2:17: {reason}" in (
        text.out
    )


async def test_message_shows_a_send_in_doubt_since_its_lease_expired(
    deployment: Deployment,
) -> None:
    message_id = await sent_message(deployment, "whatsapp")
    expired_at = float(int(time.time()) - 90)
    lease = f"lease:a1b2c3d4e5f607:{expired_at:.3f}"
    await set_keys(deployment, {f"message:dedup:{message_id}:whatsapp": lease})

    text, doc = await story(deployment, message_id)

    assert text.code == 0
    (marker,) = doc["markers"]
    assert (marker["state"], marker["worker"]) == ("in_doubt", "a1b2c3d4e5f6")
    since = datetime.fromtimestamp(expired_at, UTC).isoformat(timespec="milliseconds")
    assert marker["deadline"] == since.replace("+00:00", "Z")
    assert f"  whatsapp   in_doubt  in doubt since {marker['deadline']}: the lease of worker " in (
        text.out
    )
    assert "a1b2c3d4e5f6 (its send 07) expired mid-send (0:01:" in text.out  # 90 s ago, or so


async def test_message_exits_1_when_no_source_knows_it(deployment: Deployment) -> None:
    unknown = str(uuid.uuid4())

    text, doc = await story(deployment, unknown)

    assert text.code == 1
    assert text.out.endswith(f"message {unknown}: not found in any source\n")
    assert doc["found"] is False
    assert doc["dlq"]["note"].startswith("not searched")
