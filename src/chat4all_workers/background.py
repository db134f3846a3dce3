"""Owners of tasks: `TaskOwner`, the base of every object that holds a task group while it is
open, and `Background`, the owner of the tasks that serve many callers at once.

A `TaskOwner` opens its group in its `__aenter__` (`_open_tasks`) and creates its tasks there;
its exit is `_close()`, whatever ended the block, which ends by exiting the group
(`_close_tasks`): no task can be added from then on, `_settle()` deals with those still running,
and the group awaits every one. The group exits quietly: the body's own exception, if any,
propagates unchanged instead of wrapped in an ExceptionGroup. The supervisor
(supervisor.py), the accounts directory (accounts/directory.py) and `Background` are such
owners.

A batch of Redis commands (autopipeline.py) or of records to produce (kafka/coalescing.py) is
sent in a task of its own: it belongs to no single caller, and must not be cancelled with the
one that happened to start it. Such tasks still need an owner that awaits them, so none is
dropped and none outlives the clients it uses: `Background` holds them in a task group for as
long as the process's resources are open (resources.py opens it after the clients, so it closes
first). On exit it lets the sends under way finish until the shutdown deadline's clean-up end,
then cancels what is left (their callers, the roles, have stopped by then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from chat4all_workers.deadline import ShutdownDeadline

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class TaskOwner:
    _tasks: asyncio.TaskGroup | None = None

    async def _open_tasks(self) -> asyncio.TaskGroup:
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        self._tasks = tasks
        return tasks

    async def _close(self) -> None:
        """What closing takes; by default, only the group's exit."""
        await self._close_tasks()

    async def _close_tasks(self) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        await self._settle()
        await tasks.__aexit__(None, None, None)

    async def _settle(self) -> None:
        """The tasks still running, before the group awaits them: by default, left as they
        are."""

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()


class Background(TaskOwner):
    def __init__(self, *, shutdown: ShutdownDeadline | None = None) -> None:
        self._shutdown = shutdown
        self._live: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Background:
        await self._open_tasks()
        return self

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task this owner awaits; the work reports to its callers itself."""
        if self._tasks is None:
            work.close()
            raise RuntimeError("background work spawned outside `async with Background()`")
        task = self._tasks.create_task(work)
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    async def _settle(self) -> None:
        """Let the sends under way finish until the deadline's clean-up end; cancel the rest."""
        if self._live:
            until = None if self._shutdown is None else self._shutdown.cleanup_end()
            timeout = None if until is None else ShutdownDeadline.left_s(until)
            _, unfinished = await asyncio.wait(set(self._live), timeout=timeout)
            for task in unfinished:
                task.cancel()
