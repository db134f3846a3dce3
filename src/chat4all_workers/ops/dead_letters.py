"""The DLQ records of one message, found without reading the whole topic.

A DLQ record keeps the original record's key (kafka/dlq.py), and every record of a message is
keyed `conversation:{conversation_id}` (the router's, the outbox's, the status updater's). The
workers produce with Kafka's default partitioner (murmur2 of the key, as the Java client), so
all of a conversation's DLQ records are in ONE partition, the one that key hashes to: only that
one is read. And none is older than the message: reading starts at the offset of the message's
creation time (`offsets_for_times`, less `SKEW_S` for clocks that disagree) and stops at the
partition's end as it was when the search began, or after `limit` records (10,000 by default:
a fraction of a second of reading), whichever comes first. A search cut short by the limit says
so (`complete` false) and where it stopped.

Assumptions, said where the result is shown: the DLQ's partition count has not changed since the
records were written (a key hashes to another partition after a change), and the records were
produced by these workers (another partitioner would put them elsewhere). A DLQ copy written
without its value and key (`dlq.value_dropped`: the original was too large) cannot be matched.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from chat4all_workers.config import Settings
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.admin import new_admin, topic_partitions
from chat4all_workers.kafka.partitioning import partition_for
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.meta.events import json_object

DEFAULT_LIMIT = 10_000
SKEW_S = 300.0
_READ_TIMEOUT_S = 15.0


@frozen
class DeadLetter:
    """One DLQ record of the message, with its `dlq.*` headers."""

    partition: int
    offset: int
    timestamp: str
    error_type: str | None
    reason: str | None
    attempts: str | None
    source: str | None
    failed_at: str | None
    original: str | None  # "{topic}:{partition}:{offset}"
    headers: dict[str, str]


@dataclass
class DlqSearch:
    """Where the message's DLQ records were looked for, how far, and what was found."""

    topic: str
    key: str | None = None
    partition: int | None = None
    partitions: int = 0
    since: str | None = None
    first_offset: int | None = None
    end_offset: int | None = None
    examined: int = 0
    limit: int = DEFAULT_LIMIT
    complete: bool = False
    note: str = ""
    records: list[DeadLetter] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def find_dead_letters(
    settings: Settings,
    *,
    message_id: str,
    conversation_id: int,
    created_at: datetime,
    limit: int = DEFAULT_LIMIT,
) -> DlqSearch:
    topic = settings.topics.dlq
    key = f"conversation:{conversation_id}"
    since = created_at - timedelta(seconds=SKEW_S)
    shown = since.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    search = DlqSearch(topic=topic, key=key, limit=limit, since=shown)
    admin = new_admin(settings, "message")
    await admin.start()
    try:
        partitions = await topic_partitions(admin, topic)
    finally:
        await admin.close()
    if not partitions:
        search.note = f"no topic {topic}"
        search.complete = True
        return search
    search.partitions = len(partitions)
    tp = TopicPartition(topic, partition_for(key.encode(), len(partitions)))
    search.partition = tp.partition
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-message",
        enable_auto_commit=False,
        request_timeout_ms=settings.kafka.request_timeout_ms,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        found = (await consumer.offsets_for_times({tp: int(since.timestamp() * 1000)}))[tp]
        start = end if found is None else found.offset
        search.first_offset, search.end_offset = start, end
        consumer.seek(tp, start)
        await _read(consumer, tp, end, key.encode(), message_id.lower(), search)
    finally:
        await consumer.stop()
    return search


async def _read(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    key: bytes,
    message_id: str,
    search: DlqSearch,
) -> None:
    deadline = time.monotonic() + _READ_TIMEOUT_S
    position = search.first_offset or 0
    while position < end and search.examined < search.limit:
        if time.monotonic() > deadline:
            search.note = f"stopped after {_READ_TIMEOUT_S:.0f} s at offset {position}"
            return
        wanted = min(500, search.limit - search.examined)
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=wanted)
        for raw in batch.get(tp, []):
            if raw.offset >= end:
                break
            position = raw.offset + 1
            search.examined += 1
            record = ConsumedRecord.from_aiokafka(raw)
            if record.key == key and _about(record.value, message_id):
                search.records.append(_dead_letter(record))
    search.complete = position >= end
    if not search.complete:
        search.note = f"stopped at offset {position} after {search.examined} records (the limit)"


def _about(value: bytes | None, message_id: str) -> bool:
    """Whether a record is about the message: its `message_id`, or, for a value that is not a
    JSON object (a malformed record), its bytes naming the id."""
    if not value or message_id.encode() not in value.lower():
        return False
    doc = json_object(value)
    return doc is None or str(doc.get("message_id", "")).lower() == message_id


def _dead_letter(record: ConsumedRecord) -> DeadLetter:
    topic = record.header("dlq.original_topic")
    original = (
        f"{topic}:{record.header('dlq.original_partition')}:{record.header('dlq.original_offset')}"
        if topic
        else None
    )
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        error_type=record.header("dlq.error_type"),
        reason=record.header("dlq.reason"),
        attempts=record.header("dlq.attempts"),
        source=record.header("dlq.source"),
        failed_at=record.header("dlq.failed_at"),
        original=original,
        headers={
            k: v.decode("utf-8", "replace") for k, v in record.headers if k.startswith("dlq.")
        },
    )
