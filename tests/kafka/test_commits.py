"""Commits of finished work and the lag they leave, against a real broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from chat4all_workers.kafka.commits import Commits, forget_lag, report_lag, total_lag
from chat4all_workers.kafka.partitions import Partition
from chat4all_workers.observability.metrics import Metrics
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.support import committed_offsets, metric_value, produce

pytestmark = pytest.mark.stack


@contextlib.asynccontextmanager
async def assigned(
    stack: StackEndpoints, group: str, tps: list[TopicPartition]
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of `group` assigned `tps` by hand (no group membership), stopped on exit."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        yield consumer
    finally:
        await consumer.stop()


def finished(tp: TopicPartition, fetched: int, done: list[int]) -> Partition:
    partition = Partition(tp)
    for offset in range(fetched):
        partition.add(offset)
    for offset in done:
        partition.finish(offset)
    return partition


async def test_commits_commit_each_partitions_finished_work_and_nothing_else(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=2)
    first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)
    partitions = [finished(first, 3, [0, 1]), finished(second, 3, [1, 2])]
    commits = Commits()

    async with assigned(stack, consumer_group, [first, second]) as consumer:
        await commits.commit(consumer, partitions)

    assert await committed_offsets(stack, topic, consumer_group) == {0: 2, 1: -1}
    assert commits.total == 2
    assert commits.last_commit_age_s() is not None


async def test_commits_count_a_record_once_however_often_committed(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    tp = TopicPartition(topic, 0)
    partition = finished(tp, 2, [0])
    commits = Commits()

    async with assigned(stack, consumer_group, [tp]) as consumer:
        await commits.commit(consumer, [partition])
        await commits.commit(consumer, [partition])
        partition.finish(1)
        await commits.commit(consumer, [partition])

    assert commits.total == 2
    assert await committed_offsets(stack, topic, consumer_group) == {0: 2}


async def test_commits_in_drain_counts_only_what_was_committed_after_the_drain_began(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    tp = TopicPartition(topic, 0)
    partition = finished(tp, 3, [0])
    commits = Commits()

    async with assigned(stack, consumer_group, [tp]) as consumer:
        await commits.commit(consumer, [partition])
        before = commits.in_drain
        commits.mark_drain()
        partition.finish(1)
        partition.finish(2)
        await commits.commit(consumer, [partition])

    assert before == 0
    assert (commits.total, commits.in_drain) == (3, 2)


async def test_lag_counts_from_the_commit_position_to_the_log_end(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(b"k", str(i).encode()) for i in range(5)])
    tp = TopicPartition(topic, 0)
    partition = finished(tp, 5, [0, 1])
    metrics = Metrics()
    labels = {"topic": topic, "partition": "0"}

    async with assigned(stack, consumer_group, [tp]) as consumer:
        await consumer.seek_to_beginning(tp)

        async def log_end_known() -> bool:
            await consumer.getmany(tp, timeout_ms=100)
            return consumer.highwater(tp) is not None

        await eventually(log_end_known, message="a fetch told the log end")
        lag = total_lag(consumer, [partition])
        report_lag(metrics, consumer, [partition])
        reported = metric_value(metrics.consumer_lag, labels)
        forget_lag(metrics, tp)

    assert (lag, reported) == (3, 3)
    with pytest.raises(KeyError):
        metric_value(metrics.consumer_lag, labels)
