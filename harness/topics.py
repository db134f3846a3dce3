"""A topic written and read back: a run's input produced in bulk (`produce_documents`), and a
topic read from its beginning to its current end: how a run checks what the workers produced (a
status record once each, nothing dead-lettered) without joining any group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from harness.stack import StackEndpoints


async def produce_documents(
    bootstrap: str, topic: str, docs: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each document as one JSON record keyed by its conversation (`conversation:{id}`, as the
    platform's API keys them), acknowledged; the documents, in order. In bulk: big batches, at
    most 10,000 records awaiting their acks at once."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    produced: list[dict[str, Any]] = []
    try:
        pending = []
        for doc in docs:
            produced.append(doc)
            key = f"conversation:{doc['conversation_id']}".encode()
            pending.append(await producer.send(topic, orjson.dumps(doc), key=key))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return produced


async def partitions_of(stack: StackEndpoints, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    finally:
        await admin.close()


async def read_topic(stack: StackEndpoints, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in the topic, from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(stack, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()
