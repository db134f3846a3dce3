"""`topics ensure` against the real broker: every SPEC topic, usable when it returns, idempotent."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from chat4all_workers.kafka.admin import ensure_topics, planned_topics
from chat4all_workers.roles import load_settings
from harness.deployment import TOPIC_FIELDS
from harness.stack import StackEndpoints, unique_name

pytestmark = pytest.mark.stack


async def test_ensure_topics_creates_the_missing_ones_ready_to_use(stack: StackEndpoints) -> None:
    run = unique_name("ensure")
    topics = {field: f"{run}-{field.replace('_', '-')}" for field in TOPIC_FIELDS}
    settings = load_settings(
        {},
        {
            "kafka": {
                "bootstrap_servers": stack.kafka_bootstrap,
                "default_partitions": 3,
                "partitions": {topics["message_processing"]: 5},
            },
            "topics": topics,
        },
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        created, present = await ensure_topics(settings)
        again_created, again_present = await ensure_topics(settings)

        described = {d["topic"]: d for d in await admin.describe_topics(list(topics.values()))}
        # Usable at once: every partition has a leader and accepts a record.
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            for plan in planned_topics(settings):
                for partition in range(plan.partitions):
                    await producer.send_and_wait(plan.name, b"{}", partition=partition)
        finally:
            await producer.stop()
    finally:
        await admin.delete_topics(list(topics.values()))
        await admin.close()

    assert (sorted(created), present) == (sorted(topics.values()), [])
    assert (again_created, sorted(again_present)) == ([], sorted(topics.values()))
    counts = {name: len(d["partitions"]) for name, d in described.items()}
    assert counts[topics["message_processing"]] == 5
    assert {counts[name] for field, name in topics.items() if field != "message_processing"} == {3}
    assert all(p["leader"] >= 0 for d in described.values() for p in d["partitions"])
