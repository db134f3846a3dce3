"""Records of concurrent callers produced in one call, each caller getting its own outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from opentelemetry import trace

from chat4all_workers.background import Background
from chat4all_workers.errors import CircuitOpenError
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Delivery, Producer
from chat4all_workers.observability.tracing import RecordSpan
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


async def test_each_record_carries_its_own_callers_trace(
    stack: StackEndpoints,
    kafka_topic: KafkaTopicFactory,
    producer: Producer,
    background: Background,
) -> None:
    topic = await kafka_topic(partitions=1)
    coalescer = ProduceCoalescer(producer, spawn=background.spawn)
    parents = {n: f"00-{n + 1:032x}-{n + 1:016x}-01".encode() for n in range(3)}

    async def caller(n: int) -> None:
        """Handling a record of trace n + 1 (the last caller: a record without a trace)."""
        headers = [("traceparent", parents[n])] if n < 2 else []
        with RecordSpan("handle", headers, kind=trace.SpanKind.CONSUMER):
            (outcome,) = await coalescer.send_each(
                [OutgoingRecord(topic, orjson.dumps({"n": n}), b"k", [("h", b"v")])]
            )
            assert isinstance(outcome, Delivery)

    # One loop iteration, one producer call, run in a task the first caller's span spawned.
    await asyncio.gather(*(caller(n) for n in range(3)))

    traces = {}
    for record in await read_topic(stack, topic):
        headers = dict(record.headers)
        assert headers["h"] == b"v"
        traceparent = headers.get("traceparent", b"")
        traces[orjson.loads(record.value)["n"]] = traceparent[3:35]
    assert traces[0] == b"%032x" % 1
    assert traces[1] == b"%032x" % 2
    assert traces[2] not in (traces[0], traces[1])  # a trace of its own, not a neighbour's
