"""The status updater against real Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.roles.status_updater import next_status
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from tests.e2e.hostile import watch_logs
from tests.roles.durable_support import wait_for_records
from tests.stack import KafkaTopicFactory


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


async def new_message(pool: asyncpg.Pool, channels: list[str]) -> uuid.UUID:
    message_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO messages (id, conversation_id, channels) VALUES ($1, 42, $2::jsonb)",
        message_id,
        orjson.dumps(channels).decode(),
    )
    return message_id


def update(message_id: uuid.UUID, channel: str, status: str) -> bytes:
    return orjson.dumps(
        {"message_id": str(message_id), "conversation_id": 42, "channel": channel,
         "new_status": status, "timestamp": "2026-11-28T10:30:00Z",
         "details": {"provider_message_id": "wamid.1"}}
    )  # fmt: skip


async def produce(stack: StackEndpoints, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"conversation:42")
    finally:
        await producer.stop()


async def run_drained(settings: Settings) -> None:
    async with App(settings, roles=["status_updater"], drain=True, serve_http=False) as app:
        await app.wait()


@pytest.fixture
async def setup(
    stack: StackEndpoints,
    pg_database: str,
    redis_prefix: str,
    consumer_group: str,
    kafka_topic: KafkaTopicFactory,
) -> tuple[Settings, str, str]:
    topic = await kafka_topic(partitions=1)
    dlq = await kafka_topic(partitions=1)
    settings = settings_for(
        stack,
        database_url=pg_database,
        redis_prefix=redis_prefix,
        consumer_group=consumer_group,
        topics={"message_status_updates": topic, "dlq": dlq},
    )
    return settings, topic, dlq


async def status_of(pool: asyncpg.Pool, message_id: uuid.UUID) -> str:
    return str(await pool.fetchval("SELECT status FROM messages WHERE id = $1", message_id))


async def history(pool: asyncpg.Pool, message_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT channel, status FROM message_status_history WHERE message_id = $1 ORDER BY id",
        message_id,
    )
    return [(r["channel"], r["status"]) for r in rows]


def test_status_updater_next_status_never_moves_backwards() -> None:
    assert next_status("ACCEPTED", "SENT", every_channel_failed=False) == "SENT"
    assert next_status("DELIVERED", "SENT", every_channel_failed=False) == "DELIVERED"
    assert next_status("READ", "FAILED", every_channel_failed=False) == "READ"
    assert next_status("SENT", "FAILED", every_channel_failed=True) == "FAILED"
    assert next_status("FAILED", "READ", every_channel_failed=False) == "FAILED"


@pytest.mark.stack
async def test_status_updater_records_late_status_in_history_only(
    stack: StackEndpoints, db: asyncpg.Pool, setup: tuple[Settings, str, str]
) -> None:
    settings, topic, _ = setup
    message_id = await new_message(db, ["whatsapp", "instagram"])
    await produce(stack, topic, [update(message_id, "whatsapp", "DELIVERED"),
                                 update(message_id, "instagram", "SENT")])  # fmt: skip

    await run_drained(settings)

    assert await status_of(db, message_id) == "DELIVERED"
    assert await history(db, message_id) == [("whatsapp", "DELIVERED"), ("instagram", "SENT")]


@pytest.mark.stack
async def test_status_updater_fails_message_only_when_every_channel_failed(
    stack: StackEndpoints, db: asyncpg.Pool, setup: tuple[Settings, str, str]
) -> None:
    settings, topic, _ = setup
    message_id = await new_message(db, ["whatsapp", "instagram"])
    await produce(stack, topic, [update(message_id, "whatsapp", "FAILED")])
    await run_drained(settings)
    assert await status_of(db, message_id) == "ACCEPTED"

    await produce(stack, topic, [update(message_id, "instagram", "FAILED")])
    await run_drained(settings)

    assert await status_of(db, message_id) == "FAILED"


@pytest.mark.stack
async def test_status_updater_redelivery_adds_no_history_and_no_second_note(
    stack: StackEndpoints, db: asyncpg.Pool, setup: tuple[Settings, str, str], redis_prefix: str
) -> None:
    settings, topic, _ = setup
    message_id = await new_message(db, ["whatsapp"])
    client = aioredis.from_url(stack.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{redis_prefix}conversation:42")
    try:
        await produce(stack, topic, [update(message_id, "whatsapp", "SENT")] * 2)
        await run_drained(settings)
        notes: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while len(notes) < 1:
                note = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if note:
                    notes.append(orjson.loads(note["data"]))
        extra = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)
    finally:
        await pubsub.aclose()
        await client.aclose()

    assert await history(db, message_id) == [("whatsapp", "SENT")]
    assert notes[0]["type"] == "MessageStatusUpdated"
    assert (notes[0]["status"], notes[0]["message_status"]) == ("SENT", "SENT")
    assert extra is None


@pytest.mark.stack
async def test_status_updater_keeps_history_of_unknown_message(
    stack: StackEndpoints, db: asyncpg.Pool, setup: tuple[Settings, str, str]
) -> None:
    settings, topic, _ = setup
    message_id = uuid.uuid4()
    await produce(stack, topic, [update(message_id, "whatsapp", "SENT")])

    with watch_logs() as logs:
        await run_drained(settings)

    assert await history(db, message_id) == [("whatsapp", "SENT")]
    (warning,) = [orjson.loads(line) for _, line in logs.lines if "for unknown message" in line]
    assert warning["level"] == "WARNING"
    assert (warning["message_id"], warning["conversation_id"]) == (str(message_id), 42)


@pytest.mark.stack
async def test_status_updater_dead_letters_invalid_records_with_reason(
    stack: StackEndpoints, db: asyncpg.Pool, setup: tuple[Settings, str, str]
) -> None:
    settings, topic, dlq = setup
    bad = orjson.dumps({"message_id": "nope", "conversation_id": 42, "channel": "whatsapp",
                        "new_status": "SENT"})  # fmt: skip
    await produce(stack, topic, [b"{not json", bad])

    await run_drained(settings)

    dead = await wait_for_records(stack, dlq, expect=2)
    assert [r[2] for r in dead] == [b"{not json", bad]
    assert {r[3]["dlq.source"] for r in dead} == {b"status_updater"}
    assert all(r[3]["dlq.reason"] for r in dead)
