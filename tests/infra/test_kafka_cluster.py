"""`DEVSTACK_KAFKA_BROKERS=3`: a 3-node KRaft cluster of its own (own DEVSTACK_HOME and ports,
never the shared stack), where killing the broker that leads a partition and coordinates the
group loses nothing: producers (acks=all, min.insync.replicas 2) and consumers carry on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chat4all_workers.kafka.admin import wait_for_leaders
from harness.waiting import eventually
from tests.cluster import Cluster, describe_without, leaders

pytestmark = [pytest.mark.stack, pytest.mark.cluster]


def test_devstack_env_names_every_broker_and_production_replication(cluster: Cluster) -> None:
    base = int(cluster.env["DEVSTACK_KAFKA_PORT"])

    assert cluster.bootstrap.split(",") == [f"127.0.0.1:{base + 2 * n}" for n in range(3)]
    assert cluster.exported["CHAT4ALL_KAFKA_REPLICATION_FACTOR"] == "3"
    status = cluster.devstack("status")
    assert [line.split()[0] for line in status.splitlines() if "kafka" in line] == [
        "kafka-1",
        "kafka-2",
        "kafka-3",
    ]


async def test_topics_ensure_creates_replicated_topics_with_min_insync_two(
    cluster: Cluster,
) -> None:
    prefix = f"ens-{uuid.uuid4().hex[:8]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CHAT4ALL_"))},
        **cluster.exported,
        "CHAT4ALL_KAFKA_DEFAULT_PARTITIONS": "2",
        "CHAT4ALL_TOPICS_MESSAGE_PROCESSING": f"{prefix}-mp",
        "CHAT4ALL_TOPICS_DLQ": f"{prefix}-dlq",
    }
    ensure = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat4all_workers", "topics", "ensure", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await ensure.communicate()
    assert ensure.returncode == 0, output.decode()

    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([f"{prefix}-mp", f"{prefix}-dlq"])
        configs = cluster.devstack(
            "kafka-configs", "--entity-type", "topics", "--entity-name", f"{prefix}-mp",
            "--describe", "--all",
        )  # fmt: skip
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        await admin.delete_topics(topics)
    finally:
        await admin.close()
    replicas = {len(p["replicas"]) for t in described for p in t["partitions"]}
    assert replicas == {3}
    # From the broker's default (min.insync.replicas=2), which the topic inherits.
    assert "min.insync.replicas=2 " in configs


async def test_killing_the_leader_and_coordinator_loses_nothing(cluster: Cluster) -> None:
    topic, group = f"fo-{uuid.uuid4().hex[:8]}", f"fo-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=cluster.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
    )
    sent: list[bytes] = []
    received: set[bytes] = set()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])
        await wait_for_leaders(admin, {topic: 3})
        await producer.start()
        await consumer.start()

        async def consume() -> None:
            async for record in consumer:
                received.add(record.value or b"")
                await consumer.commit()

        async def produce(n: int) -> None:
            for i in range(n):
                value = f"{len(sent)}-{i}".encode()
                await producer.send_and_wait(topic, value, key=str(i % 7).encode())
                sent.append(value)

        reader = asyncio.create_task(consume())
        await produce(100)
        await eventually(lambda: len(received) == len(sent), timeout_s=30, message="first 100")

        coordinator = await admin.find_coordinator(group)
        (described,) = await admin.describe_topics([topic])
        led = [p for p, leader in leaders(described).items() if leader == coordinator]
        assert led, f"broker {coordinator} coordinates {group} but leads no partition of {topic}"
        cluster.devstack("stop", "--kill", f"kafka-{coordinator}")

        await produce(200)  # acks=all with 2 of 3 replicas in sync still acknowledges
        await eventually(
            lambda: len(received) == len(sent), timeout_s=60, message="records after the kill"
        )
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        after, new_coordinator = await describe_without(cluster, coordinator, topic, group)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.close()
        cluster.devstack("start", "kafka")  # the killed node comes back for the next test

    assert received == set(sent)
    assert len(sent) == 300
    assert coordinator not in leaders(after).values()
    assert new_coordinator != coordinator
