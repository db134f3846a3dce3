"""The outbox poller against real PostgreSQL, Kafka and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.roles.outbox import route
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.roles.durable_support import wait_for_records
from tests.stack import KafkaTopicFactory
from tests.support import metric_value

pytestmark = pytest.mark.stack

Event = tuple[
    str, str, str, dict[str, Any], str | None
]  # aggregate id, type, event type, payload, topic


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await pool.close()


async def insert(pool: asyncpg.Pool, events: Sequence[Event], **columns: Any) -> None:
    """One transaction, events in the given order (their `seq` order)."""
    async with pool.acquire() as conn, conn.transaction():
        for aggregate_id, aggregate_type, event_type, payload, topic in events:
            await conn.execute(
                """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, topic,
                       payload, attempts, next_attempt_at, last_error)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7,
                           now() + make_interval(secs => $8), $9)""",
                uuid.uuid4(),
                aggregate_type,
                aggregate_id,
                event_type,
                topic,
                orjson.dumps(payload).decode(),
                columns.get("attempts", 0),
                columns.get("retry_in_s"),
                columns.get("last_error"),
            )


async def bulk_insert(
    pool: asyncpg.Pool, rounds: int, aggregates: int, *, pause_s: float = 0.0
) -> None:
    """`rounds` transactions, each one event for every aggregate, payload {conversation_id, n}."""
    for n in range(rounds):
        async with pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
                   SELECT gen_random_uuid(), 'conversation', a::text, 'message.updated',
                          jsonb_build_object('conversation_id', a, 'n', $2::int)
                   FROM generate_series(1, $1) a""",
                aggregates,
                n,
            )
        if pause_s:
            await asyncio.sleep(pause_s)


async def pending(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox_events WHERE NOT published"))


def outbox_settings(
    stack: StackEndpoints, database: str, prefix: str, topic: str, **outbox: Any
) -> Settings:
    return settings_for(
        stack,
        database_url=database,
        redis_prefix=prefix,
        topics={"message_events": topic, "dlq": topic + "-dlq"},
        outbox={"poll_interval_ms": 100, **outbox},
    )


def assert_once_in_order(
    records: list[tuple[int, bytes | None, bytes, dict[str, bytes]]], rounds: int, aggregates: int
) -> None:
    seen: dict[int, list[int]] = defaultdict(list)
    for _, key, value, _ in records:
        payload = orjson.loads(value)
        assert key == f"conversation:{payload['conversation_id']}".encode()
        seen[payload["conversation_id"]].append(payload["n"])
    duplicates = sum(len(ns) - len(set(ns)) for ns in seen.values())
    assert duplicates == 0, f"{duplicates} duplicates"
    assert len(seen) == aggregates
    for aggregate, ns in seen.items():
        assert ns == list(range(rounds)), (
            f"aggregate {aggregate} out of order or missing: {ns[:10]}"
        )


def test_outbox_route_follows_row_then_settings_then_spec_table(stack: StackEndpoints) -> None:
    settings = settings_for(stack, outbox={"routes": {"message.created": "x", "file.*": "files"}})

    assert route(settings, "message.created", "own") == "own"
    assert route(settings, "message.created", None) == "x"
    assert route(settings, "file.uploaded", None) == "files"
    assert route(settings, "message.read", None) == "message_events"
    assert route(settings, "conversation.renamed", None) == "conversation_events"
    assert route(settings, "user.joined", None) == "default_events"


async def test_outbox_publishes_value_key_headers_and_marks_published(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=1)
    await insert(
        db,
        [
            ("m-1", "message", "message.updated", {"conversation_id": 42, "text": "hi"}, None),
            ("f-1", "file", "file.done", {"file_id": "abc"}, topic),
        ],
    )

    async with App(
        outbox_settings(stack, pg_database, redis_prefix, topic),
        roles=["outbox"],
        drain=True,
        serve_http=False,
    ) as app:
        await app.wait()

    records = await wait_for_records(stack, topic, expect=2)
    assert [(r[1], orjson.loads(r[2])) for r in records] == [
        (b"conversation:42", {"conversation_id": 42, "text": "hi"}),
        (b"f-1", {"file_id": "abc"}),
    ]
    headers = records[0][3]
    assert (headers["event_type"], headers["aggregate_type"], headers["aggregate_id"]) == (
        b"message.updated",
        b"message",
        b"m-1",
    )
    assert uuid.UUID(headers["event_id"].decode())
    assert await pending(db) == 0


async def test_outbox_announces_message_events_on_redis(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=1)
    client = aioredis.from_url(stack.redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{redis_prefix}conversation:7")
    try:
        async with App(
            outbox_settings(stack, pg_database, redis_prefix, topic),
            roles=["outbox"],
            serve_http=False,
        ) as app:
            await app.wait_ready()
            await insert(
                db,
                [
                    (
                        "m-7",
                        "message",
                        "message.read",
                        {"conversation_id": 7, "message_id": "m-7"},
                        None,
                    )
                ],
            )
            note = None
            async with asyncio.timeout(10):
                while note is None:
                    note = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    finally:
        await pubsub.aclose()
        await client.aclose()

    assert orjson.loads(note["data"]) == {
        "type": "message.read",
        "conversation_id": 7,
        "message_id": "m-7",
    }


async def test_outbox_event_waiting_for_retry_holds_back_its_aggregate(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=1)
    await insert(
        db,
        [("a", "message", "message.updated", {"n": 0}, None)],
        attempts=1,
        retry_in_s=3600.0,
        last_error="boom",
    )
    await insert(
        db,
        [
            ("a", "message", "message.updated", {"n": 1}, None),
            ("b", "message", "message.updated", {"n": 2}, None),
        ],
    )

    async with App(
        outbox_settings(stack, pg_database, redis_prefix, topic),
        roles=["outbox"],
        drain=True,
        serve_http=False,
    ) as app:
        await app.wait()

    records = await wait_for_records(stack, topic, expect=1, timeout_s=5)
    assert [orjson.loads(r[2]) for r in records] == [{"n": 2}]
    assert await pending(db) == 2


async def test_outbox_dead_letters_event_past_max_retries_keeping_last_error(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=1)
    dlq = await kafka_topic(partitions=1)
    await insert(
        db,
        [("a", "message", "message.updated", {"n": 0}, None)],
        attempts=4,
        retry_in_s=0.0,
        last_error="kafka down",
    )
    await insert(db, [("a", "message", "message.updated", {"n": 1}, None)])
    settings = outbox_settings(stack, pg_database, redis_prefix, topic).replace(topics={"dlq": dlq})

    async with App(settings, roles=["outbox"], drain=True, serve_http=False) as app:
        await app.wait()

    (dead,) = await wait_for_records(stack, dlq, expect=1)
    assert orjson.loads(dead[2]) == {"n": 0}
    assert dead[3]["dlq.source"] == b"outbox"
    assert dead[3]["dlq.original_topic"] == topic.encode()
    assert [orjson.loads(r[2]) for r in await wait_for_records(stack, topic, expect=1)] == [
        {"n": 1}
    ]
    row = await db.fetchrow("SELECT published, last_error FROM outbox_events WHERE attempts = 4")
    assert (row["published"], row["last_error"]) == (True, "kafka down")


async def test_outbox_publishes_events_inserted_while_running_once_and_in_order(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=4)
    settings = outbox_settings(stack, pg_database, redis_prefix, topic, batch_size=500)

    async with App(settings, roles=["outbox"], serve_http=False) as app:
        await app.wait_ready()
        await bulk_insert(db, rounds=20, aggregates=500, pause_s=0.05)
        await eventually(lambda: _none_pending(db), timeout_s=60, message="outbox drained")

    assert_once_in_order(
        await wait_for_records(stack, topic, expect=10_000), rounds=20, aggregates=500
    )


async def test_outbox_three_pollers_publish_each_event_once(
    stack: StackEndpoints,
    db: asyncpg.Pool,
    pg_database: str,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    topic = await kafka_topic(partitions=4)
    settings = outbox_settings(stack, pg_database, redis_prefix, topic, batch_size=200)

    async with contextlib.AsyncExitStack() as stack_:
        sups = [
            await stack_.enter_async_context(App(settings, roles=["outbox"], serve_http=False))
            for _ in range(3)
        ]
        await asyncio.gather(*(s.wait_ready() for s in sups))
        await bulk_insert(db, rounds=20, aggregates=500)
        await eventually(lambda: _none_pending(db), timeout_s=60, message="outbox drained")
        # A poller counts its batch only after the commit (and the Redis announcement), so the
        # table can show every event published before the last batch counted itself.
        await eventually(
            lambda: sum(_published_counts(sups)) >= 10_000,
            timeout_s=30,
            message="every published batch counted",
        )
        published = _published_counts(sups)

    assert_once_in_order(
        await wait_for_records(stack, topic, expect=10_000), rounds=20, aggregates=500
    )
    assert sum(published) == 10_000
    assert sum(1 for n in published if n > 0) >= 2, f"work did not spread: {published}"


async def _none_pending(pool: asyncpg.Pool) -> bool:
    return await pending(pool) == 0


def _published_counts(sups: Sequence[App]) -> list[float]:
    """Each poller's `messages_processed_total{outcome="published"}` (0 before its first)."""
    labels = {"role": "outbox", "channel": "", "outcome": "published"}
    counts = []
    for sup in sups:
        try:
            counts.append(metric_value(sup.metrics.messages_processed, labels))
        except KeyError:  # this poller has published nothing yet
            counts.append(0.0)
    return counts
