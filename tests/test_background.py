"""Owners of tasks (background.py): a task group held while open, every task awaited on exit,
the body's own exception unwrapped; `Background` lets work under way finish until the deadline."""

from __future__ import annotations

import asyncio

import pytest

from chat4all_workers.background import Background, TaskOwner
from chat4all_workers.deadline import ShutdownDeadline


class Ticker(TaskOwner):
    """A task owner with one task that runs until cancelled, and a record of its closing."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    async def __aenter__(self) -> Ticker:
        tasks = await self._open_tasks()
        self._ticker = tasks.create_task(asyncio.sleep(3600))
        return self

    async def _close(self) -> None:
        self.steps.append("close")
        self._ticker.cancel()
        await self._close_tasks()
        self.steps.append("closed")


async def test_task_owner_exit_awaits_its_tasks_after_its_own_closing() -> None:
    async with Ticker() as ticker:
        pass

    assert ticker.steps == ["close", "closed"]
    assert ticker._ticker.cancelled()


async def test_task_owner_lets_the_bodys_exception_through_unwrapped() -> None:
    with pytest.raises(LookupError, match="the body's"):
        async with Ticker():
            raise LookupError("the body's")


async def test_background_awaits_the_work_it_spawned() -> None:
    finished: list[str] = []

    async def work() -> None:
        await asyncio.sleep(0.01)
        finished.append("batch")

    async with Background() as background:
        background.spawn(work())

    assert finished == ["batch"]


async def test_background_cancels_work_still_running_at_the_cleanup_end() -> None:
    deadline = ShutdownDeadline.begun_now(0.0)  # every point of it has passed
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def stuck() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async with asyncio.timeout(5):
        async with Background(shutdown=deadline) as background:
            background.spawn(stuck())
            await started.wait()

    assert cancelled == [True]


async def test_background_refuses_work_once_closed() -> None:
    async with Background() as background:
        pass

    async def work() -> None:
        return None

    with pytest.raises(RuntimeError, match="outside"):
        background.spawn(work())
