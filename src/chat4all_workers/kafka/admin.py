"""Topic administration: `topics ensure` creates the SPEC topics, idempotently."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chat4all_workers.config import Settings
from chat4all_workers.frozen import frozen


@frozen
class TopicPlan:
    name: str
    partitions: int
    config: dict[str, str]


def topic_names(settings: Settings) -> list[str]:
    """Every topic of the platform: the fields of `[topics]`, so the list is written once."""
    return [getattr(settings.topics, f.name) for f in dataclasses.fields(settings.topics)]


def planned_topics(settings: Settings) -> list[TopicPlan]:
    t, k = settings.topics, settings.kafka
    plans = []
    for name in topic_names(settings):
        config = {"retention.ms": str(k.dlq_retention_ms)} if name == t.dlq else {}
        plans.append(TopicPlan(name, k.partitions.get(name, k.default_partitions), config))
    return plans


async def ensure_topics(settings: Settings) -> tuple[list[str], list[str]]:
    """Create the missing topics; returns (created, already present). Existing topics are left
    as they are: partition counts only grow by an operator's deliberate decision."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-admin",
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        plans = planned_topics(settings)
        missing = [p for p in plans if p.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        p.name,
                        p.partitions,
                        settings.kafka.replication_factor,
                        topic_configs=p.config,
                    )
                    for p in missing
                ]
            )
            # Return once they are usable: a deploy step after `topics ensure` may produce.
            timeout_s = settings.kafka.request_timeout_ms / 1000
            await wait_for_leaders(admin, {p.name: p.partitions for p in missing}, timeout_s)
        return [p.name for p in missing], [p.name for p in plans if p.name in existing]
    finally:
        await admin.close()


async def wait_for_leaders(
    admin: AIOKafkaAdminClient, partitions: Mapping[str, int], timeout_s: float = 30.0
) -> None:
    """Until each topic (name -> partition count) has a leader for every partition: a topic
    just created refuses records until then. TimeoutError after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        for topic, count in partitions.items():
            while True:
                (described,) = await admin.describe_topics([topic])
                leaders = [p for p in described["partitions"] if p["leader"] >= 0]
                if described["error_code"] == 0 and len(leaders) == count:
                    break
                await asyncio.sleep(0.05)


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The topic's partitions, or [] when it does not exist (fresh metadata, not a cache)."""
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] != 0:
        return []
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


def new_admin(settings: Settings, purpose: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-{purpose}",
        request_timeout_ms=settings.kafka.request_timeout_ms,
    )
