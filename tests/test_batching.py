"""IterationBatcher: what one event-loop iteration adds goes out as one batch (batching.py)."""

from __future__ import annotations

import asyncio

from chat4all_workers.background import Background
from chat4all_workers.batching import IterationBatcher
from harness.waiting import eventually

DEADLINE_S = 2.0


class Recorder:
    """A `send` that records each batch; `gate`, when set, holds every send until it opens."""

    def __init__(self, *, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started: list[list[int]] = []
        self.gate = gate

    async def __call__(self, batch: list[int]) -> None:
        self.started.append(batch)
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(batch)

    async def until(self, count: int) -> None:
        """Wait until `count` batches were sent (on a deadline)."""
        await eventually(
            lambda: len(self.batches) >= count,
            timeout_s=DEADLINE_S,
            interval_s=0,
            message=f"{count} batches sent",
        )


async def test_iteration_batcher_sends_one_iterations_items_as_one_batch(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    for item in range(5):
        batcher.add(item)
    await send.until(1)

    assert send.batches == [[0, 1, 2, 3, 4]]


async def test_iteration_batcher_sends_nothing_within_the_adding_iteration(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    batcher.add(1)
    sent_at_once = list(send.started)
    await send.until(1)

    assert sent_at_once == []
    assert send.batches == [[1]]


async def test_iteration_batcher_sends_a_lone_item_after_one_iteration(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    batcher.add(1)
    await asyncio.sleep(0)  # one iteration: the flush ran and started the send's task
    await asyncio.sleep(0)  # the next: the send ran

    assert send.batches == [[1]]


async def test_iteration_batcher_items_of_later_iterations_go_in_later_batches(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    batcher.add(1)
    batcher.add(2)
    await send.until(1)
    batcher.add(3)
    await send.until(2)

    assert send.batches == [[1, 2], [3]]


async def test_iteration_batcher_collects_items_added_by_many_tasks(background: Background) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    async def handler(item: int) -> None:
        batcher.add(item)

    async with asyncio.TaskGroup() as tasks:
        for item in range(10):
            tasks.create_task(handler(item))
    await send.until(1)

    assert send.batches == [list(range(10))]


async def test_iteration_batcher_max_batch_sends_a_full_batch_early(background: Background) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn, max_batch=3)

    for item in range(7):
        batcher.add(item)
    await send.until(3)

    assert send.batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_iteration_batcher_max_batch_does_not_wait_for_the_end_of_the_iteration(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn, max_batch=3)

    for item in range(3):
        batcher.add(item)
    await asyncio.sleep(0)  # one iteration: the full batch's send already ran in it

    assert send.batches == [[0, 1, 2]]


async def test_iteration_batcher_max_batch_exactly_reached_leaves_no_empty_batch(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn, max_batch=2)

    for item in range(4):
        batcher.add(item)
    await send.until(2)
    batcher.add(4)
    await send.until(3)

    assert send.batches == [[0, 1], [2, 3], [4]]  # no [] in between


async def test_iteration_batcher_without_max_batch_never_splits_an_iteration(
    background: Background,
) -> None:
    send = Recorder()
    batcher = IterationBatcher(send, spawn=background.spawn)

    for item in range(10_000):
        batcher.add(item)
    await send.until(1)

    assert [len(batch) for batch in send.batches] == [10_000]


async def test_iteration_batcher_sends_each_batch_in_a_task_of_its_own(
    background: Background,
) -> None:
    gate = asyncio.Event()
    send = Recorder(gate=gate)
    batcher = IterationBatcher(send, spawn=background.spawn)
    batcher.add(1)
    await eventually(lambda: len(send.started) == 1, timeout_s=DEADLINE_S, interval_s=0)

    batcher.add(2)  # the first send still waits
    await eventually(lambda: len(send.started) == 2, timeout_s=DEADLINE_S, interval_s=0)
    gate.set()
    await send.until(2)

    assert send.started == [[1], [2]]
    assert sorted(send.batches) == [[1], [2]]
