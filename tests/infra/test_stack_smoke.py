"""Smoke tests of the backing services: each one does what the workers will ask of it."""

from __future__ import annotations

import asyncio
import io
import os
import time
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from miniopy_async.api import Minio
from miniopy_async.commonconfig import ComposeSource
from miniopy_async.deleteobjects import DeleteObject

from harness.stack import StackEndpoints
from tests.stack import KafkaTopicFactory

pytestmark = pytest.mark.stack

WAIT_S = 30.0
MIB = 1024 * 1024


async def test_kafka_record_round_trips_through_topic(
    stack: StackEndpoints, kafka_topic: KafkaTopicFactory, consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await consumer.start()
    try:
        sent = await producer.send_and_wait(
            topic, b'{"hello": "kafka"}', key=b"conversation:42", headers=[("traceparent", b"00")]
        )

        async with asyncio.timeout(WAIT_S):
            record = await consumer.getone()
    finally:
        await consumer.stop()
        await producer.stop()

    assert (record.topic, record.partition, record.offset) == (topic, sent.partition, sent.offset)
    assert record.key == b"conversation:42"
    assert record.value == b'{"hello": "kafka"}'
    assert list(record.headers) == [("traceparent", b"00")]


async def test_postgres_table_insert_reads_back(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, body jsonb NOT NULL)")

        await conn.execute("INSERT INTO items (body) VALUES ($1::jsonb)", '{"a": 1}')
        rows = await conn.fetch("SELECT id, body FROM items")
    finally:
        await conn.close()

    assert [(row["id"], row["body"]) for row in rows] == [(1, '{"a": 1}')]


async def test_postgres_notify_reaches_listener(pg_database: str) -> None:
    listener = await asyncpg.connect(pg_database)
    notifier = await asyncpg.connect(pg_database)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(
            "outbox_events", lambda _conn, _pid, _channel, payload: received.put_nowait(payload)
        )

        await notifier.execute("SELECT pg_notify('outbox_events', 'row-1')")
        async with asyncio.timeout(WAIT_S):
            payload = await received.get()
    finally:
        await notifier.close()
        await listener.close()

    assert payload == "row-1"


async def test_redis_list_push_then_pop_is_fifo(stack: StackEndpoints, redis_prefix: str) -> None:
    client = aioredis.from_url(stack.redis_url)
    key = f"{redis_prefix}fallback:message_queue"
    try:
        await client.lpush(key, b"first", b"second")

        popped = [await client.rpop(key), await client.rpop(key), await client.rpop(key)]
    finally:
        await client.aclose()

    assert popped == [b"first", b"second", None]


async def test_redis_publish_reaches_subscriber(stack: StackEndpoints, redis_prefix: str) -> None:
    client = aioredis.from_url(stack.redis_url)
    pubsub = client.pubsub()
    channel = f"{redis_prefix}conversation:42"
    try:
        await pubsub.subscribe(channel)
        # the subscription is confirmed before anything is published
        confirmation = await _next_message(pubsub, kind="subscribe")

        receivers = await client.publish(channel, b'{"type": "message.created"}')
        message = await _next_message(pubsub, kind="message")
    finally:
        await pubsub.aclose()
        await client.aclose()

    assert confirmation["channel"] == channel.encode()
    assert receivers == 1
    assert message["data"] == b'{"type": "message.created"}'


async def _next_message(pubsub: aioredis.client.PubSub, *, kind: str) -> dict[str, object]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == kind:
            return dict(message)
    raise TimeoutError(f"no {kind} message within {WAIT_S} s")


async def test_s3_compose_object_concatenates_sources(s3_client: Minio, s3_bucket: str) -> None:
    first, last = os.urandom(5 * MIB), os.urandom(1 * MIB)
    await s3_client.put_object(s3_bucket, "chunks/u1/chunk-00001", io.BytesIO(first), len(first))
    await s3_client.put_object(s3_bucket, "chunks/u1/chunk-00002", io.BytesIO(last), len(last))

    await s3_client.compose_object(
        s3_bucket,
        "files/u1/a.bin",
        [
            ComposeSource(s3_bucket, "chunks/u1/chunk-00001"),
            ComposeSource(s3_bucket, "chunks/u1/chunk-00002"),
        ],
    )

    response = await s3_client.get_object(s3_bucket, "files/u1/a.bin")
    try:
        merged = await response.read()
    finally:
        response.release()
    assert merged == first + last


async def test_s3_presigned_get_serves_object_over_http(s3_client: Minio, s3_bucket: str) -> None:
    body = os.urandom(MIB + 17)
    await s3_client.put_object(s3_bucket, "files/u2/b.bin", io.BytesIO(body), len(body))

    url = await s3_client.presigned_get_object(
        s3_bucket, "files/u2/b.bin", expires=timedelta(hours=24)
    )
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        status, fetched = response.status, await response.read()

    assert status == 200
    assert fetched == body


async def test_s3_remove_objects_deletes_every_listed_object(
    s3_client: Minio, s3_bucket: str
) -> None:
    names = [f"chunks/u3/chunk-{n:05d}" for n in (1, 2, 3)]
    for name in names:
        await s3_client.put_object(s3_bucket, name, io.BytesIO(b"x"), 1)

    errors = [e async for e in s3_client.remove_objects(s3_bucket, map(DeleteObject, names))]
    remaining = [o.object_name async for o in s3_client.list_objects(s3_bucket, recursive=True)]

    assert errors == []
    assert remaining == []
