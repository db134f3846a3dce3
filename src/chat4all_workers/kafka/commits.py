"""Committing finished work, and the lag it leaves behind the log end.

Auto-commit is off (STYLE 10): each partition is committed at its commit position, one past the
last record finished in order (partitions.py), so nothing unfinished is ever committed. The
engine commits every `commit_interval_s`, on a revocation (rebalance.py) and when it hands its
work back (draining.py); the counts here are what its `stats()` reports.

`kafka_consumer_lag` is measured from the same position: records finished but not committed
yet are not lag, records fetched but unfinished are.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from chat4all_workers.kafka.partitions import Partition
from chat4all_workers.observability.metrics import Metrics, forget


class Commits:
    def __init__(self) -> None:
        self.total = 0  # records whose offsets a commit covered
        self._total_before_drain: int | None = None
        self._last_at: float | None = None

    def mark_drain(self) -> None:
        """From here on, commits count as the drain's (`committed_in_drain`)."""
        if self._total_before_drain is None:
            self._total_before_drain = self.total

    @property
    def in_drain(self) -> int:
        """Records committed since the drain began (0 before)."""
        return 0 if self._total_before_drain is None else self.total - self._total_before_drain

    def last_commit_age_s(self) -> float | None:
        return None if self._last_at is None else time.monotonic() - self._last_at

    async def commit(self, consumer: AIOKafkaConsumer, partitions: Iterable[Partition]) -> None:
        """Commit each partition's finished work not committed yet (nothing if none)."""
        wanted = list(partitions)
        offsets = {p.tp: pos for p in wanted if (pos := p.to_commit()) is not None}
        if not offsets:
            return
        counts = {p.tp: p.finished_uncommitted for p in wanted if p.tp in offsets}
        await consumer.commit(offsets)
        for p in wanted:
            if p.tp in offsets:
                self.total += p.committed_to(offsets[p.tp], covering=counts[p.tp])
        self._last_at = time.monotonic()


def total_lag(consumer: AIOKafkaConsumer, partitions: Iterable[Partition]) -> int | None:
    """The lag of these partitions together; None while no partition's is known."""
    lags = [p.lag(consumer.highwater(p.tp)) for p in partitions]
    known = [lag for lag in lags if lag is not None]
    return sum(known) if known else None


def report_lag(
    metrics: Metrics, consumer: AIOKafkaConsumer, partitions: Iterable[Partition]
) -> None:
    """`kafka_consumer_lag` of every partition this member owns, refreshed even when nothing
    arrives."""
    for partition in partitions:
        lag = partition.lag(consumer.highwater(partition.tp))
        if lag is not None:
            metrics.consumer_lag.set(_lag_labels(partition.tp), lag)


def forget_lag(metrics: Metrics, tp: TopicPartition) -> None:
    """A revoked partition's lag is its new owner's to report."""
    forget(metrics.consumer_lag, _lag_labels(tp))


def _lag_labels(tp: TopicPartition) -> dict[str, str]:
    return {"topic": tp.topic, "partition": str(tp.partition)}
