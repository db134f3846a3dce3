"""Records of concurrent callers produced in one call, each caller getting its own outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from chat4all_workers.background import Background
from chat4all_workers.errors import CircuitOpenError
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.producer import Delivery, OutgoingRecord, Producer
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.topics import read_topic
from tests.stack import KafkaTopicFactory

pytestmark = pytest.mark.stack


@pytest.fixture
async def producer(stack: StackEndpoints) -> AsyncIterator[Producer]:
    settings = settings_for(stack)
    client = Producer(settings.kafka, settings.breaker)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def test_callers_of_one_loop_iteration_each_get_their_own_outcomes(
    stack: StackEndpoints,
    kafka_topic: KafkaTopicFactory,
    producer: Producer,
    background: Background,
) -> None:
    topics = [await kafka_topic(partitions=1) for _ in range(3)]
    coalescer = ProduceCoalescer(producer, spawn=background.spawn)
    futures = [
        coalescer.send_each([OutgoingRecord(t, orjson.dumps({"n": n}), b"k") for n in range(2)])
        for t in topics
    ]
    gone = futures[1]
    gone.cancel()  # a caller that stopped waiting (its timeout)

    kept = await asyncio.gather(futures[0], futures[2])

    for outcomes, topic in zip(kept, (topics[0], topics[2]), strict=True):
        assert [(o.topic, o.offset) for o in outcomes if isinstance(o, Delivery)] == [
            (topic, 0),
            (topic, 1),
        ]
    # What a caller stopped waiting for still reached Kafka: the producer owns its fate.
    assert len(await read_topic(stack, topics[1])) == 2


async def test_an_open_breaker_reaches_every_caller(
    kafka_topic: KafkaTopicFactory, producer: Producer, background: Background
) -> None:
    topic = await kafka_topic(partitions=1)
    producer.breaker.record_failure(count=100)
    coalescer = ProduceCoalescer(producer, spawn=background.spawn)

    results = await asyncio.gather(
        coalescer.send_each([OutgoingRecord(topic, b"{}")]),
        coalescer.send_each([OutgoingRecord(topic, b"{}")]),
        return_exceptions=True,
    )

    assert all(isinstance(r, CircuitOpenError) for r in results), results
