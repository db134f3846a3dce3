"""The owner of the tasks that serve many callers at once.

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
from types import TracebackType
from typing import Any

from chat4all_workers.deadline import ShutdownDeadline

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Background:
    def __init__(self, *, shutdown: ShutdownDeadline | None = None) -> None:
        self._shutdown = shutdown
        self._group: asyncio.TaskGroup | None = None
        self._live: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Background:
        group = asyncio.TaskGroup()
        await group.__aenter__()
        self._group = group
        return self

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task this owner awaits; the work reports to its callers itself."""
        if self._group is None:
            work.close()
            raise RuntimeError("background work spawned outside `async with Background()`")
        task = self._group.create_task(work)
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        if group is None:
            return
        if self._live:
            until = None if self._shutdown is None else self._shutdown.cleanup_end()
            timeout = None if until is None else ShutdownDeadline.left_s(until)
            _, unfinished = await asyncio.wait(set(self._live), timeout=timeout)
            for task in unfinished:
                task.cancel()
        await group.__aexit__(None, None, None)
