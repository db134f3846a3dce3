"""Items added in the same event-loop iteration, handed on together as one batch.

Why: hundreds of handlers run at once, so their small requests (a Redis command, a record to
produce) arrive together; sent one by one, each pays a round trip and the call's bookkeeping.
Collected until the loop has run every ready callback, they go out in one call. No timer, no
lingering: a lone item waits one loop iteration, no longer.

The callers (autopipeline.py for Redis commands, kafka/coalescing.py for produced records) own
what a batch means and how each item learns its outcome; this is only the collecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class IterationBatcher(Generic[T]):
    def __init__(
        self, send: Callable[[list[T]], Coroutine[Any, Any, None]], *, max_batch: int | None = None
    ) -> None:
        """`send(batch)` runs in a task of its own per batch; at `max_batch` items a batch goes
        at once, without waiting for the end of the iteration."""
        self._send = send
        self._max_batch = max_batch
        self._queue: list[T] = []
        self._sending: set[asyncio.Task[None]] = set()  # strong references while they run

    def add(self, item: T) -> None:
        self._queue.append(item)
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        elif self._max_batch is not None and len(self._queue) >= self._max_batch:
            self._flush()

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
