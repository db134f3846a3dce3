"""The consumer engine against a real broker: order per key, bounded in-flight, honest commits."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from chat4all_workers.errors import InvalidRecordError, PermanentError, RetryableError
from chat4all_workers.kafka.consumer import ConsumerEngine
from chat4all_workers.kafka.held import held, wait_unless_handed_back
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.support import committed_offsets, metric_value, produce

pytestmark = pytest.mark.stack

Handler = Callable[[ConsumedRecord], Awaitable[None]]


def engine_for(
    stack: StackEndpoints,
    topic: str,
    group: str,
    handler: Handler,
    *,
    on_permanent: Callable[[ConsumedRecord, PermanentError], Awaitable[None]] | None = None,
    max_in_flight: int = 100,
    drain: bool = True,
    commit_interval_s: float = 0.1,
    metrics: Metrics | None = None,
    kafka: dict[str, Any] | None = None,
    max_held_records: int = 10_000,
) -> ConsumerEngine:
    async def ignore(record: ConsumedRecord, exc: PermanentError) -> None:
        raise AssertionError(f"unexpected permanent error for {record.offset}: {exc}")

    return ConsumerEngine(
        settings=settings_for(
            stack, kafka={"max_held_records": max_held_records, **(kafka or {})}
        ).kafka,
        topics=[topic],
        group_id=group,
        role="test",
        handler=handler,
        on_permanent=on_permanent or ignore,
        metrics=metrics or Metrics(),
        max_in_flight=max_in_flight,
        commit_interval_s=commit_interval_s,
        drain=drain,
    )


@contextlib.asynccontextmanager
async def running(engine: ConsumerEngine) -> AsyncIterator[asyncio.Event]:
    """Run a non-draining engine in the background; stop it (gracefully) on exit."""
    stopping = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(engine.run(stopping))
        try:
            yield stopping
        finally:
            stopping.set()


async def test_consumer_keeps_order_per_key_and_runs_keys_concurrently(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=3)
    await produce(stack, topic, [(f"k{i % 20}".encode(), str(i).encode()) for i in range(400)])
    seen: dict[bytes, list[int]] = {}
    active = 0
    peak = 0

    async def handler(record: ConsumedRecord) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        assert record.key is not None
        assert record.value is not None
        seen.setdefault(record.key, []).append(int(record.value))
        active -= 1

    await engine_for(stack, topic, consumer_group, handler).run(asyncio.Event())

    assert sum(len(v) for v in seen.values()) == 400
    assert all(values == sorted(values) for values in seen.values())
    assert peak > 1  # different keys really overlapped
    assert peak <= 20  # but one key never ran twice at once


async def test_consumer_commits_only_up_to_the_first_unfinished_record(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(10)])
    release = asyncio.Event()
    finished: set[int] = set()

    async def handler(record: ConsumedRecord) -> None:
        if record.offset == 3:
            await release.wait()
        finished.add(record.offset)

    engine = engine_for(stack, topic, consumer_group, handler, drain=False)
    async with running(engine):
        await eventually(lambda: len(finished) == 9, message="all but offset 3 finished")
        await eventually(lambda: engine.stats().last_commit_age_s is not None, message="a commit")
        assert (await committed_offsets(stack, topic, consumer_group))[0] == 3
        release.set()
        await eventually(
            lambda: _committed_is(stack, topic, consumer_group, 10), message="commit after offset 3"
        )


async def _committed_is(stack: StackEndpoints, topic: str, group: str, expected: int) -> bool:
    return (await committed_offsets(stack, topic, group))[0] == expected


async def test_consumer_bounds_in_flight_records_and_pauses_fetching(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=2)
    await produce(stack, topic, [(f"k{i}".encode(), b"x") for i in range(300)])
    gate = asyncio.Event()
    started = 0

    async def handler(record: ConsumedRecord) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    engine = engine_for(stack, topic, consumer_group, handler, max_in_flight=25, drain=False)
    async with running(engine):
        await eventually(lambda: engine.stats().paused, message="fetching paused at the bound")
        assert engine.stats().in_flight == 25
        assert started == 25
        gate.set()
        await eventually(lambda: engine.stats().finished_total == 300, message="all finished")


async def test_consumer_retries_retryable_errors_in_place(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(b"same", b"1"), (b"same", b"2")])
    calls: list[bytes] = []

    async def handler(record: ConsumedRecord) -> None:
        assert record.value is not None
        calls.append(record.value)
        if calls.count(b"1") < 3 and record.value == b"1":
            raise RetryableError("flaky", retry_after_s=0.01)

    await engine_for(stack, topic, consumer_group, handler).run(asyncio.Event())

    assert calls == [b"1", b"1", b"1", b"2"]


async def test_consumer_hands_permanent_errors_to_the_role_and_moves_on(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(b"k", b"bad"), (b"k", b"good")])
    dead: list[tuple[bytes | None, str]] = []
    handled: list[bytes | None] = []

    async def handler(record: ConsumedRecord) -> None:
        if record.value == b"bad":
            raise InvalidRecordError("not a message")
        handled.append(record.value)

    async def on_permanent(record: ConsumedRecord, exc: PermanentError) -> None:
        dead.append((record.value, str(exc)))

    await engine_for(stack, topic, consumer_group, handler, on_permanent=on_permanent).run(
        asyncio.Event()
    )

    assert dead == [(b"bad", "not a message")]
    assert handled == [b"good"]
    assert (await committed_offsets(stack, topic, consumer_group))[0] == 2


async def test_consumer_redelivers_unfinished_work_after_a_stop(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(b"one-key", str(i).encode()) for i in range(5)])
    first_run: list[int] = []
    blocked = asyncio.Event()

    async def slow_on_two(record: ConsumedRecord) -> None:
        assert record.value is not None
        if record.value == b"2":
            blocked.set()
            await asyncio.Event().wait()  # never finishes: cancelled at shutdown
        first_run.append(int(record.value))

    engine = engine_for(stack, topic, consumer_group, slow_on_two, drain=False)
    stopping = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        run = tasks.create_task(engine.run(stopping))
        await asyncio.wait_for(blocked.wait(), 30)
        stopping.set()
        await asyncio.sleep(0)  # let the engine see the stop before we cancel it
        run.cancel()

    second_run: list[int] = []

    async def record_all(record: ConsumedRecord) -> None:
        assert record.value is not None
        second_run.append(int(record.value))

    await engine_for(stack, topic, consumer_group, record_all).run(asyncio.Event())

    assert first_run == [0, 1]
    assert second_run == [2, 3, 4]


async def test_consumer_reports_lag_from_the_commit_position_even_when_idle(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(b"k", str(i).encode()) for i in range(10)])
    release = asyncio.Event()
    metrics = Metrics()

    async def handler(record: ConsumedRecord) -> None:
        if record.offset == 4:
            await release.wait()

    engine = engine_for(stack, topic, consumer_group, handler, drain=False, metrics=metrics)
    labels = {"topic": topic, "partition": "0"}
    async with running(engine):
        await eventually(lambda: _gauge(metrics, labels) == 6, message="lag 6 behind offset 4")
        release.set()
        await eventually(lambda: _gauge(metrics, labels) == 0, message="lag back to 0")


def _gauge(metrics: Metrics, labels: dict[str, str]) -> float | None:
    try:
        return metric_value(metrics.consumer_lag, labels)
    except KeyError:
        return None


async def test_consumer_handler_bug_lets_other_keys_finish_and_commits_them_before_raising(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    await produce(stack, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(10)])
    started: set[int] = set()
    finished: set[int] = set()

    async def buggy_on_nine(record: ConsumedRecord) -> None:
        started.add(record.offset)
        if record.offset == 9:
            await eventually(lambda: len(started) == 10, message="every key under way")
            raise KeyError("a bug")
        await asyncio.sleep(0.5)  # still running when the bug is raised
        finished.add(record.offset)

    engine = engine_for(stack, topic, consumer_group, buggy_on_nine, drain=False)
    with pytest.raises(KeyError):
        await engine.run(asyncio.Event())

    assert finished == set(range(9))  # the other keys were not cancelled
    assert (await committed_offsets(stack, topic, consumer_group))[0] == 9  # and were committed


async def produce_to(
    stack: StackEndpoints, topic: str, records: Sequence[tuple[int, bytes]]
) -> None:
    """(partition, key) records, the value being the key, in order."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for partition, key in records:
            await producer.send(topic, key, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


# A rebalance: a revocation waits up to a third of this for the revoked keys' handlers, a sixth
# more for cancelled ones, leaving the rest to notice the rebalance and rejoin.
REBALANCE = {"rebalance_timeout_ms": 9000}


async def test_consumer_revocation_commits_nothing_unfinished_nor_later_for_a_revoked_partition(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=2)
    await produce_to(stack, topic, [(0, b"a"), (1, b"b")])
    release_first, release_second = asyncio.Event(), asyncio.Event()
    running: dict[str, list[int]] = {"first": [], "second": []}
    cancelled_at: list[float] = []
    started_at: list[float] = []
    loop = asyncio.get_running_loop()

    def blocking(member: str, release: asyncio.Event) -> Handler:
        async def handle(record: ConsumedRecord) -> None:
            running[member].append(record.partition)
            if member == "second":
                started_at.append(loop.time())
            try:
                await release.wait()
            except asyncio.CancelledError:  # a handler that cannot be interrupted (at once)
                cancelled_at.append(loop.time())
                await release.wait()
            running[member].remove(record.partition)

        return handle

    first = engine_for(stack, topic, consumer_group, blocking("first", release_first),
                       drain=False, kafka=REBALANCE)  # fmt: skip
    second = engine_for(stack, topic, consumer_group, blocking("second", release_second),
                        drain=False, kafka=REBALANCE)  # fmt: skip
    async with running_engine(first):
        await eventually(lambda: sorted(running["first"]) == [0, 1], message="both blocked")
        async with running_engine(second):
            await eventually(lambda: len(running["second"]) == 1, timeout_s=60, message="moved")
            (moved,) = running["second"]
            nothing_yet = await committed_offsets(stack, topic, consumer_group)

            release_first.set()  # the first member's handlers end, the revoked one's too
            kept = 1 - moved
            await eventually(
                lambda: _committed_at(stack, topic, consumer_group, kept, 1),
                message="the first member commits the partition it kept",
            )
            while_second_runs = await committed_offsets(stack, topic, consumer_group)
            release_second.set()
            await eventually(
                lambda: _committed_at(stack, topic, consumer_group, moved, 1),
                message="the new owner commits the moved partition",
            )

    assert len(cancelled_at) == 2  # the revocation gave up on both handlers after its wait
    assert max(cancelled_at) < min(started_at)  # before the new owner could start the key
    assert nothing_yet == {0: -1, 1: -1}  # it committed nothing unfinished
    assert while_second_runs[moved] == -1  # nor did the late finish of the revoked partition


async def test_consumer_never_runs_a_key_on_two_members_at_once_through_rebalances(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=4)
    keys, rounds = 20, 50
    active: dict[bytes, str] = {}
    overlaps: list[tuple[bytes, str, str]] = []
    handled: set[int] = set()
    rng = random.Random(7)

    def member(name: str) -> Handler:
        async def handle(record: ConsumedRecord) -> None:
            assert record.key is not None
            assert record.value is not None
            other = active.get(record.key)
            if other is not None:
                overlaps.append((record.key, other, name))
            active[record.key] = name
            try:
                await asyncio.sleep(rng.uniform(0.01, 0.15))
            finally:
                if active.get(record.key) == name:
                    del active[record.key]
            handled.add(int(record.value))

        return handle

    async def stream() -> None:  # a round for every key each 0.2 s, for 10 s
        for n in range(rounds):
            batch = [(f"k{k}".encode(), str(n * keys + k).encode()) for k in range(keys)]
            await produce(stack, topic, batch)
            await asyncio.sleep(0.2)

    engines = [
        engine_for(stack, topic, consumer_group, member(name), drain=False, kafka=REBALANCE)
        for name in ("first", "second", "third")
    ]
    async with asyncio.TaskGroup() as tasks, running_engine(engines[0]):
        producing = tasks.create_task(stream())
        async with running_engine(engines[1]):  # a member joins
            await eventually(lambda: engines[1].stats().finished_total >= 20, timeout_s=60)
            async with running_engine(engines[2]):  # another joins
                await eventually(lambda: engines[2].stats().finished_total >= 20, timeout_s=60)
            # and leaves again, then the second one leaves too
        await producing
        await eventually(lambda: len(handled) == keys * rounds, timeout_s=60, message="all")

    assert overlaps == []


@contextlib.asynccontextmanager
async def running_engine(engine: ConsumerEngine) -> AsyncIterator[None]:
    async with running(engine):
        await eventually(lambda: engine.stats().assigned > 0, timeout_s=60, message="assigned")
        yield


async def _committed_at(
    stack: StackEndpoints, topic: str, group: str, partition: int, expected: int
) -> bool:
    return (await committed_offsets(stack, topic, group))[partition] == expected


# -- held records -------------------------------------------------------------------------------


def held_or_free(
    waiting: asyncio.Event, finished: list[bytes]
) -> Callable[[ConsumedRecord], Awaitable[None]]:
    """A handler that holds records keyed `held-*` until `waiting` is set; others go through."""

    async def handler(record: ConsumedRecord) -> None:
        assert record.key is not None
        assert record.value is not None
        if record.key.startswith(b"held-"):
            async with held():
                await waiting.wait()
        finished.append(record.value)

    return handler


async def test_consumer_held_records_do_not_eat_the_in_flight_budget(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    held_records = [(f"held-{i % 10}".encode(), f"h{i}".encode()) for i in range(30)]
    free_records = [(f"free-{i}".encode(), f"f{i}".encode()) for i in range(50)]
    await produce(stack, topic, held_records + free_records)
    release = asyncio.Event()
    finished: list[bytes] = []

    engine = engine_for(
        stack, topic, consumer_group, held_or_free(release, finished), max_in_flight=10,
        drain=False,
    )  # fmt: skip
    async with running(engine):
        await eventually(lambda: len(finished) == 50, message="the free records, past the held")
        assert engine.stats().held == 30  # ten keys waiting, with the records queued behind
        assert engine.stats().in_flight == 0
        # Held records are unfinished: the commit position stays at the first of them.
        assert (await committed_offsets(stack, topic, consumer_group))[0] == -1
        release.set()
        await eventually(lambda: len(finished) == 80, message="the held records too")
        await eventually(
            lambda: _committed_is(stack, topic, consumer_group, 80), message="commit after them"
        )

    assert engine.stats().held == 0
    assert sorted(v for v in finished if v.startswith(b"h")) == sorted(v for _, v in held_records)


async def test_consumer_held_records_past_their_bound_count_as_in_flight(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=1)
    held_records = [(f"held-{i}".encode(), f"h{i}".encode()) for i in range(10)]
    free_records = [(f"free-{i}".encode(), f"f{i}".encode()) for i in range(5)]
    await produce(stack, topic, held_records + free_records)
    release = asyncio.Event()
    finished: list[bytes] = []

    engine = engine_for(
        stack, topic, consumer_group, held_or_free(release, finished), max_in_flight=4,
        max_held_records=3, drain=False,
    )  # fmt: skip
    async with running(engine):
        await eventually(lambda: engine.stats().paused, message="fetching paused at the bounds")
        assert (engine.stats().held, engine.stats().in_flight) == (3, 4)  # memory stays bounded
        assert finished == []
        release.set()
        await eventually(lambda: len(finished) == 15, message="everything, once released")


async def test_consumer_wakes_a_long_wait_of_a_revoked_key_at_once(
    stack: StackEndpoints, kafka_topic: Callable[..., Awaitable[str]], consumer_group: str
) -> None:
    topic = await kafka_topic(partitions=2)
    await produce_to(stack, topic, [(0, b"a"), (1, b"b")])
    loop = asyncio.get_running_loop()
    waiting: set[int] = set()
    handed_back: list[float] = []

    async def wait_long(record: ConsumedRecord) -> None:
        waiting.add(record.partition)
        if await wait_unless_handed_back(60.0):  # a handler waiting on an outside condition
            handed_back.append(loop.time())
            raise RetryableError("handing the record back")

    async def other(record: ConsumedRecord) -> None:
        pass

    first = engine_for(stack, topic, consumer_group, wait_long, drain=False, kafka=REBALANCE)
    second = engine_for(stack, topic, consumer_group, other, drain=False, kafka=REBALANCE)
    async with running_engine(first):
        await eventually(lambda: waiting == {0, 1}, message="both waiting")
        joined = loop.time()
        async with running_engine(second):
            await eventually(lambda: bool(handed_back), timeout_s=30, message="handed back")

    # Handed back as the revocation began, not after its wait (a third of 9 s) and a cancel;
    # what remains is the rebalance noticed by a heartbeat (session_timeout_ms / 3 = 2 s).
    assert handed_back[0] - joined < REBALANCE["rebalance_timeout_ms"] / 3000
