"""The drain: a bug's own deadline, the wake-up of long waits, cancelling at the drain deadline."""

from __future__ import annotations

import asyncio
import math

from aiokafka import TopicPartition

from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.kafka.draining import Drain, cancel
from chat4all_workers.kafka.partitions import Ownership, Partition
from chat4all_workers.kafka.records import ConsumedRecord

RECORD = ConsumedRecord("topic", 0, 7, b"key", b"value", (), 0)


async def never_finishing() -> None:
    await asyncio.Event().wait()


def drain_for(shutdown: ShutdownDeadline, interrupted: list[bool] | None = None) -> Drain:
    def on_interrupt() -> None:
        if interrupted is not None:
            interrupted.append(True)

    return Drain(role="test", shutdown=shutdown, on_interrupt=on_interrupt)


async def test_drain_after_a_bug_has_a_deadline_of_the_shutdown_budget_begun_at_the_bug() -> None:
    drain = drain_for(ShutdownDeadline(10.0))  # the process is not stopping: no deadline
    before = drain.point(ShutdownDeadline.end)

    drain.defer_bug(RECORD, KeyError("a bug"))

    assert math.isinf(before)
    left = ShutdownDeadline.left_s(drain.point(ShutdownDeadline.end))
    assert left is not None
    assert 9.0 < left <= 10.0


async def test_drain_point_is_the_process_deadline_when_it_comes_before_the_bugs() -> None:
    shutdown = ShutdownDeadline.begun_now(10.0)
    drain = drain_for(shutdown)

    drain.defer_bug(RECORD, KeyError("a bug"))  # begun later than the process's deadline

    assert drain.point(ShutdownDeadline.end) == shutdown.end()


async def test_drain_defer_bug_keeps_the_first_bug() -> None:
    drain = drain_for(ShutdownDeadline(10.0))
    first, second = KeyError("first"), KeyError("second")

    noted = [drain.defer_bug(RECORD, first), drain.defer_bug(RECORD, second)]

    assert noted == [True, False]
    assert drain.bug is first
    assert drain.draining


async def test_drain_hands_back_records_of_a_revoked_partition_or_when_stopping() -> None:
    drain = drain_for(ShutdownDeadline(10.0))
    owned = Partition(TopicPartition("topic", 0))
    revoking = Partition(TopicPartition("topic", 1), ownership=Ownership.REVOKING)

    before_stop = (drain.hands_back(owned), drain.hands_back(revoking))
    drain.stopping.set()

    assert before_stop == (False, True)
    assert drain.hands_back(owned)


async def test_drain_interrupt_wakes_whoever_waits_and_the_fetch_loop() -> None:
    interrupted: list[bool] = []
    drain = drain_for(ShutdownDeadline(10.0), interrupted)
    waited_on = drain.wakeup

    drain.interrupt()

    assert waited_on.is_set()
    assert not drain.wakeup.is_set()  # a fresh one for the next wait
    assert interrupted == [True]


async def test_drain_finish_in_flight_lets_handlers_finish_before_the_drain_deadline() -> None:
    drain = drain_for(ShutdownDeadline.begun_now(5.0))

    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        quick = tasks.create_task(asyncio.sleep(0.01))
        await drain.finish_in_flight([quick])

    assert drain.cancelled == 0
    assert not quick.cancelled()


async def test_drain_finish_in_flight_cancels_handlers_running_at_the_drain_deadline() -> None:
    drain = drain_for(ShutdownDeadline.begun_now(0.5))  # drain_end 0.4 s from now

    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        quick = tasks.create_task(asyncio.sleep(0.01))
        stuck = tasks.create_task(never_finishing())
        await drain.finish_in_flight([quick, stuck])

    assert drain.cancelled == 1
    assert stuck.cancelled()
    assert not quick.cancelled()


async def test_cancel_gives_a_handler_finishing_what_is_under_way_a_second_cancel() -> None:
    loop = asyncio.get_running_loop()
    first_cancel_taken = asyncio.Event()

    async def finishing_what_is_under_way() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            first_cancel_taken.set()
            await asyncio.Event().wait()  # the second cancel ends this

    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        handler = tasks.create_task(finishing_what_is_under_way())
        await asyncio.sleep(0)  # the handler is running
        await cancel({handler}, until=loop.time() + 0.4, why="in a test", role="test")

    assert first_cancel_taken.is_set()
    assert handler.cancelled()


async def test_cancel_returns_by_its_deadline_when_a_handler_ignores_cancellation() -> None:
    loop = asyncio.get_running_loop()
    released = asyncio.Event()

    async def ignoring_cancellation() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue  # a handler that swallows cancellation

    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        handler = tasks.create_task(ignoring_cancellation())
        await asyncio.sleep(0)
        until = loop.time() + 0.2
        await cancel({handler}, until=until, why="in a test", role="test")
        returned_at = loop.time()
        still_running = not handler.done()
        released.set()

    assert still_running
    assert until <= returned_at < until + 1.0
