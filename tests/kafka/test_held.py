"""`held()` and `wait_unless_handed_back` in a key worker of an engine, and outside one."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import TopicPartition

from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.kafka.budget import Budget
from chat4all_workers.kafka.draining import Drain
from chat4all_workers.kafka.held import KeyWorker, enter_key_worker, held, wait_unless_handed_back
from chat4all_workers.kafka.partitions import Ownership, Partition
from chat4all_workers.kafka.records import ConsumedRecord

T = TypeVar("T")


def key_worker(records: int) -> KeyWorker:
    """A key worker with `records` taken (the head and those queued behind it)."""
    budget = Budget(max_in_flight=100, max_held_records=100)
    partition = Partition(TopicPartition("topic", 0))
    scope = (partition, b"key")
    budget.take()
    for _ in range(records - 1):
        budget.queue_behind(scope)
    queue = deque(
        ConsumedRecord("topic", 0, offset, b"key", b"value", (), 0) for offset in range(records)
    )
    drain = Drain(role="test", shutdown=ShutdownDeadline(30.0), on_interrupt=budget.wake)
    return KeyWorker(budget=budget, drain=drain, scope=scope, queue=queue)


async def in_key_worker(worker: KeyWorker, body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` in a task of its own entered as `worker`, as the engine runs a key."""

    async def run() -> T:
        enter_key_worker(worker)
        return await body()

    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        task = tasks.create_task(run())
    return task.result()


async def test_held_counts_the_keys_records_as_held_while_inside() -> None:
    worker = key_worker(records=3)

    async def hold() -> tuple[int, int]:
        async with held():
            return (worker.budget.in_flight, worker.budget.held)

    before = (worker.budget.in_flight, worker.budget.held)
    inside = await in_key_worker(worker, hold)

    assert before == (1, 2)  # the head in flight, the two behind it waiting (held)
    assert inside == (0, 3)  # the head waits too
    assert (worker.budget.in_flight, worker.budget.held) == (1, 2)


async def test_held_outside_an_engine_does_nothing() -> None:
    async with held():
        inside = True

    assert inside


async def test_wait_unless_handed_back_returns_at_once_for_a_revoked_partition() -> None:
    worker = key_worker(records=1)
    partition, _ = worker.scope
    partition.ownership = Ownership.REVOKING

    handed_back = await in_key_worker(worker, lambda: wait_unless_handed_back(60.0))

    assert handed_back is True


async def test_wait_unless_handed_back_wakes_when_the_engine_begins_to_drain() -> None:
    worker = key_worker(records=1)

    async def stop_while_waiting() -> bool:
        async with asyncio.TaskGroup() as tasks:
            waiting = tasks.create_task(wait_unless_handed_back(60.0))
            await asyncio.sleep(0)  # the handler is waiting
            worker.drain.stopping.set()
            worker.drain.interrupt()
        return waiting.result()

    handed_back = await in_key_worker(worker, stop_while_waiting)

    assert handed_back is True


async def test_wait_unless_handed_back_returns_false_after_the_delay_when_still_owned() -> None:
    worker = key_worker(records=1)

    handed_back = await in_key_worker(worker, lambda: wait_unless_handed_back(0.01))

    assert handed_back is False


async def test_wait_unless_handed_back_outside_an_engine_is_a_plain_sleep() -> None:
    assert await wait_unless_handed_back(0.01) is False
