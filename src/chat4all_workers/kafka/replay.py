"""`dlq replay`: send dead-lettered records back to the topic they came from.

The replay group (`{kafka.consumer_group}-dlq-replay`) remembers how far previous replays went, so
a replay is not repeated. A replay reads up to the DLQ's end as it was when the replay started
(records dead-lettered meanwhile wait for the next one), republishes each matching record to its
`dlq.original_topic` with its original key and value and without the `dlq.*` headers, and commits,
per partition, the contiguous run of records it replayed. A record that does not match the filters
stays in the DLQ for a later replay, and the commit stops before it: records after it that were
replayed now may be replayed again by a later run, which consumers absorb (they deduplicate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from chat4all_workers.config import DLQ_REPLAY_GROUP, Settings
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.admin import new_admin, topic_partitions
from chat4all_workers.kafka.dlq import DLQ_HEADER_PREFIX
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.kafka.records import ConsumedRecord

log = logging.getLogger(__name__)


@frozen
class ReplayFilter:
    limit: int | None = None
    since: datetime | None = None
    reason: str | None = None

    def matches(self, record: ConsumedRecord) -> bool:
        if self.reason and self.reason.lower() not in (record.header("dlq.reason") or "").lower():
            return False
        if self.since is not None:
            failed_at = _parse_time(record.header("dlq.failed_at"))
            when = failed_at or datetime.fromtimestamp(
                record.timestamp_ms / 1000, self.since.tzinfo
            )
            if when < self.since:
                return False
        return True


@dataclass
class ReplaySummary:
    examined: int = 0
    replayed: int = 0
    skipped: int = 0
    unreplayable: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def replay_group(settings: Settings) -> str:
    return settings.kafka.group_for(DLQ_REPLAY_GROUP)


def replay_headers(record: ConsumedRecord) -> list[tuple[str, bytes]]:
    """The record's headers as they were before dead-lettering."""
    return [(k, v) for k, v in record.headers if not k.startswith(DLQ_HEADER_PREFIX)]


async def replay_dlq(
    settings: Settings,
    *,
    filters: ReplayFilter,
    dry_run: bool,
    progress: Callable[[ReplaySummary, ConsumedRecord, str], None] | None = None,
) -> ReplaySummary:
    summary = ReplaySummary(dry_run=dry_run)
    admin = new_admin(settings, "dlq-replay")
    await admin.start()
    try:
        partitions = await topic_partitions(admin, settings.topics.dlq)
    finally:
        await admin.close()
    if not partitions:
        return summary
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=replay_group(settings),
        client_id=f"{settings.kafka.client_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = None if dry_run else Producer(settings.kafka, settings.breaker)
    await consumer.start()
    try:
        if producer is not None:
            await producer.start()
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        for tp in partitions:
            commit_to = await _replay_partition(
                consumer, producer, tp, ends[tp], filters, summary, progress
            )
            if commit_to is not None and not dry_run:
                await consumer.commit({tp: commit_to})
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return summary


async def _replay_partition(
    consumer: AIOKafkaConsumer,
    producer: Producer | None,
    tp: TopicPartition,
    end: int,
    filters: ReplayFilter,
    summary: ReplaySummary,
    progress: Callable[[ReplaySummary, ConsumedRecord, str], None] | None,
) -> int | None:
    """Replay one partition up to `end`; returns the offset to commit (None: nothing to)."""
    commit_to: int | None = None
    contiguous = True
    while await consumer.position(tp) < end:
        if filters.limit is not None and summary.replayed >= filters.limit:
            break
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
        for raw in batch.get(tp, []):
            if raw.offset >= end or (
                filters.limit is not None and summary.replayed >= filters.limit
            ):
                return commit_to
            record = ConsumedRecord.from_aiokafka(raw)
            summary.examined += 1
            target = record.header("dlq.original_topic")
            if not filters.matches(record):
                summary.skipped += 1
                contiguous = False
                outcome = "skipped"
            elif not target or record.header("dlq.value_dropped") is not None:
                summary.unreplayable += 1
                contiguous = False
                outcome = "no dlq.original_topic header" if not target else "value not copied"
            else:
                if producer is not None:
                    await producer.send(
                        OutgoingRecord(target, record.value, record.key, replay_headers(record))
                    )
                summary.replayed += 1
                summary.by_topic[target] = summary.by_topic.get(target, 0) + 1
                outcome = f"-> {target}"
                if contiguous:
                    commit_to = record.offset + 1
            if progress is not None:
                progress(summary, record, outcome)
    return commit_to


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
