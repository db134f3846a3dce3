"""The producer through a Kafka outage: the send waits for Kafka's verdict instead of giving up,
so each record lands exactly once; the breaker opens on unacknowledged records within
`breaker.ack_timeout_s`; a fallback record is parked only when it was never handed to Kafka.

The producer reaches Kafka through `durable_support.KafkaProxy`, whose `stop()` is an honest
network outage for this producer only (the shared broker keeps running)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.errors import CircuitOpenError
from chat4all_workers.kafka.breaker import BreakerState
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Delivery, Producer
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.roles.durable_support import KafkaProxy, wait_for_records
from tests.stack import KafkaTopicFactory

pytestmark = pytest.mark.stack

QUEUE = "fallback:message_queue"


@contextlib.asynccontextmanager
async def producer_behind(
    proxy: KafkaProxy, stack: StackEndpoints, redis_prefix: str, metrics: Metrics
) -> AsyncIterator[Producer]:
    settings = settings_for(
        stack,
        redis_prefix=redis_prefix,
        kafka={"bootstrap_servers": proxy.address, "request_timeout_ms": 2000},
        breaker={"failure_threshold": 3, "cooldown_s": 60.0, "ack_timeout_s": 1.0},
    )
    needs = frozenset({Need.KAFKA, Need.REDIS})
    async with open_resources(settings, metrics, needs) as resources:
        yield resources.kafka()


def numbered(topic: str, n: int) -> OutgoingRecord:
    return OutgoingRecord(topic, orjson.dumps({"n": n}), b"k")


async def test_producer_send_waits_through_an_outage_and_the_record_lands_once(
    stack: StackEndpoints, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    proxy = KafkaProxy(stack.kafka_bootstrap)
    await proxy.start()
    metrics = Metrics()
    gauge = metrics.breaker_state
    try:
        async with producer_behind(proxy, stack, redis_prefix, metrics) as producer:
            await producer.send(numbered(topic, 0))

            await proxy.stop()
            began = time.monotonic()
            waiting = [asyncio.create_task(producer.send(numbered(topic, n))) for n in (1, 2, 3)]
            await eventually(lambda: gauge.get({"service": "kafka"}) == BreakerState.OPEN)
            opened_after_s = time.monotonic() - began
            with pytest.raises(CircuitOpenError):
                await producer.send(numbered(topic, 99))
            await asyncio.sleep(3.0)  # past request_timeout_ms: nothing may expire meanwhile
            assert not any(task.done() for task in waiting)

            await proxy.start()
            deliveries = await asyncio.wait_for(asyncio.gather(*waiting), 30)
            closed = producer.breaker.state
    finally:
        await proxy.stop()

    records = await wait_for_records(stack, topic, expect=4)
    assert [orjson.loads(r[2])["n"] for r in records] == [0, 1, 2, 3]
    assert all(isinstance(d, Delivery) and not d.parked for d in deliveries)
    assert opened_after_s < 1.0 + 1.0  # ack_timeout_s, plus the time the outage took to notice
    assert closed is BreakerState.CLOSED  # the late acknowledgements closed it


async def test_producer_parks_a_fallback_record_only_if_kafka_never_had_it(
    stack: StackEndpoints, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=2)
    redis = aioredis.from_url(stack.redis_url)
    proxy = KafkaProxy(stack.kafka_bootstrap)
    await proxy.start()
    try:
        async with producer_behind(proxy, stack, redis_prefix, Metrics()) as producer:
            await producer.send(numbered(topic, -1))  # the topic's metadata, known from now on
            await proxy.stop()
            handed_over = [
                asyncio.create_task(producer.send(numbered(topic, n), fallback=True))
                for n in range(5)
            ]
            await eventually(lambda: producer.breaker.state is BreakerState.OPEN)
            parked = [await producer.send(numbered(topic, n), fallback=True) for n in range(5, 8)]

            await proxy.start()
            waited = await asyncio.wait_for(asyncio.gather(*handed_over), 30)
        queued = [orjson.loads(item) for item in await redis.lrange(redis_prefix + QUEUE, 0, -1)]
    finally:
        await proxy.stop()
        await redis.aclose()

    on_topic = [orjson.loads(r[2])["n"] for r in await wait_for_records(stack, topic, expect=6)]
    assert sorted(on_topic) == [-1, 0, 1, 2, 3, 4]  # each handed-over record exactly once
    assert not any(d.parked for d in waited)
    assert all(d.parked for d in parked)
    assert [q["value"]["n"] for q in queued] == [5, 6, 7]  # and only the others parked


async def test_producer_stop_is_bounded_while_records_wait_for_an_absent_kafka(
    stack: StackEndpoints, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    proxy = KafkaProxy(stack.kafka_bootstrap)
    await proxy.start()
    try:
        async with producer_behind(proxy, stack, redis_prefix, Metrics()) as producer:
            await producer.send(numbered(topic, 0))
            await proxy.stop()
            abandoned = asyncio.create_task(producer.send(numbered(topic, 1)))
            await eventually(lambda: producer.unacknowledged == 1, message="record handed over")
            abandoned.cancel()  # its caller hit the shutdown deadline
            with contextlib.suppress(asyncio.CancelledError):
                await abandoned
            loop = asyncio.get_running_loop()
            began = loop.time()
            await producer.stop(until=began + 1.0)
            stopped_after_s = loop.time() - began
    finally:
        await proxy.stop()

    assert stopped_after_s < 1.5
    assert producer.unacknowledged == 0  # the queued record was dropped, not left waiting
