"""What a consumer group without committed offsets would re-read, against a real broker."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from chat4all_workers.kafka.backlog import uncommitted_backlog
from harness.deployment import settings_for
from harness.stack import StackEndpoints, unique_name
from tests.support import commit_offsets

pytestmark = pytest.mark.stack

HOUR_MS = 3600 * 1000


async def produce_aged(
    stack: StackEndpoints, topic: str, *, partition: int, count: int, age_ms: int
) -> None:
    """`count` records on one partition whose timestamps are `age_ms` in the past."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        stamp = int(time.time() * 1000) - age_ms
        for n in range(count):
            await producer.send(topic, b"x%d" % n, partition=partition, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()


async def test_uncommitted_backlog_counts_only_partitions_without_a_committed_offset(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=3)
    for partition in range(3):
        await produce_aged(stack, topic, partition=partition, count=6, age_ms=2 * HOUR_MS)
        await produce_aged(stack, topic, partition=partition, count=4, age_ms=0)
    await commit_offsets(stack, consumer_group, {TopicPartition(topic, 0): 3})

    backlog = await uncommitted_backlog(
        settings_for(stack), group=consumer_group, topic=topic, window_s=3600
    )

    assert (backlog.partitions, backlog.uncommitted) == (3, 2)
    assert (backlog.records, backlog.older_than_window) == (20, 12)
    assert backlog.took_s < 2.0


async def test_uncommitted_backlog_of_a_window_older_than_every_record_is_empty(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=2)
    await produce_aged(stack, topic, partition=1, count=5, age_ms=2 * HOUR_MS)

    backlog = await uncommitted_backlog(
        settings_for(stack), group=consumer_group, topic=topic, window_s=3 * 3600
    )

    assert (backlog.records, backlog.older_than_window) == (5, 0)


async def test_uncommitted_backlog_of_a_missing_topic_is_empty_and_creates_nothing(
    stack: StackEndpoints, consumer_group: str
) -> None:
    topic = unique_name("missing")

    backlog = await uncommitted_backlog(
        settings_for(stack), group=consumer_group, topic=topic, window_s=1
    )

    assert (backlog.partitions, backlog.records) == (0, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()
