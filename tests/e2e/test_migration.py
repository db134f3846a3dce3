"""Switching over from the platform's original workers (docs/migrating.md).

The original router consumed `message_processing` as group `message_router_group`. A stream that
group read halfway is handed to this router: with `kafka.groups.router` naming the old group it
continues where the old one stopped; without, it warns, before sending anything, that it will
re-read records older than the dedup window.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from chat4all_workers.app import App
from chat4all_workers.status import collect_status
from harness.deployment import Deployment
from harness.stack import unique_name
from harness.topics import read_topic
from tests.support import FakeChannelApi, commit_offsets, router_record

pytestmark = pytest.mark.stack

AGE_MS = 2 * 3600 * 1000  # the records were written two hours ago ...
WINDOW_S = 3600  # ... and the dedup window is one hour


class WarningWitness(logging.Handler):
    """Keeps each re-read warning with the number of sends the provider had seen when it was
    logged."""

    def __init__(self, channel: FakeChannelApi) -> None:
        super().__init__(logging.WARNING)
        self.channel = channel
        self.seen: list[tuple[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "no committed offset" in record.getMessage():
            self.seen.append((record.getMessage(), len(self.channel.calls)))


async def old_stream(deployment: Deployment, count: int) -> list[str]:
    """`count` messages over 4 conversations, two hours old; their texts in offset order."""
    topic = deployment.topics["message_processing"]
    producer = AIOKafkaProducer(bootstrap_servers=deployment.stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        stamp = int(time.time() * 1000) - AGE_MS
        for n in range(count):
            key, value = router_record(n % 4, f"old-{n}")
            await producer.send(topic, value, key=key, timestamp_ms=stamp)
        await producer.flush()
    finally:
        await producer.stop()
    return [f"old-{n}" for n in range(count)]


async def original_router_read_half(deployment: Deployment, group: str) -> set[str]:
    """What the original router did: commit, on every partition, half of what it holds.
    Returns the texts it had processed."""
    records = await read_topic(deployment.stack, deployment.topics["message_processing"])
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for r in records:
        text = orjson.loads(r.value)["payload"]["content"]
        by_partition.setdefault(r.partition, []).append((r.offset, text))
    done: set[str] = set()
    offsets: dict[TopicPartition, int] = {}
    for partition, items in by_partition.items():
        half = len(items) // 2
        offsets[TopicPartition(deployment.topics["message_processing"], partition)] = half
        done |= {text for offset, text in items if offset < half}
    await commit_offsets(deployment.stack, group, offsets)
    return done


async def route(deployment: Deployment, channel: FakeChannelApi, **kafka: object) -> None:
    settings = deployment.settings(
        kafka=dict(kafka),
        whatsapp={"base_url": channel.base_url},
        delivery={"dedup_ttl_s": WINDOW_S},
    )
    async with App(settings, roles=["router"], drain=True, serve_http=False) as app:
        await asyncio.wait_for(app.wait(), 60)


async def test_router_with_the_original_group_sends_only_what_the_original_did_not(
    deployment: Deployment,
) -> None:
    group = unique_name("message_router_group")
    texts = await old_stream(deployment, 40)
    done_before = await original_router_read_half(deployment, group)

    async with FakeChannelApi() as channel:
        witness = WarningWitness(channel)
        logging.getLogger("chat4all_workers").addHandler(witness)
        try:
            await route(deployment, channel, groups={"router": group})
        finally:
            logging.getLogger("chat4all_workers").removeHandler(witness)

    assert len(done_before) == 20
    assert sorted(channel.texts()) == sorted(set(texts) - done_before)
    assert witness.seen == []
    settings = deployment.settings(kafka={"groups": {"router": group}})
    report = await collect_status(settings, workers=[])
    assert [(g.group, g.lag) for g in report.consumer_lag] == [(group, 0)]


async def test_router_without_the_original_group_warns_before_sending_anything(
    deployment: Deployment,
) -> None:
    texts = await old_stream(deployment, 40)
    await original_router_read_half(deployment, unique_name("message_router_group"))

    async with FakeChannelApi() as channel:
        witness = WarningWitness(channel)
        logging.getLogger("chat4all_workers").addHandler(witness)
        try:
            await route(deployment, channel)
        finally:
            logging.getLogger("chat4all_workers").removeHandler(witness)

    ((message, sends_before),) = witness.seen
    assert sends_before == 0
    assert "re-read 40 records from the beginning, 40 of them older than the dedup window" in (
        message
    )
    assert "CHAT4ALL_KAFKA_GROUPS=router=" in message
    assert "KAFKA_AUTO_OFFSET_RESET=latest" in message
    assert sorted(channel.texts()) == sorted(texts)
