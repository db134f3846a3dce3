"""Items added in the same event-loop iteration, handed on together as one batch.

Why: hundreds of handlers run at once, so their small requests (a Redis command, a record to
produce) arrive together; sent one by one, each pays a round trip and the call's bookkeeping.
Collected until the loop has run every ready callback, they go out in one call. No timer, no
lingering: a lone item waits one loop iteration, no longer; at `max_batch` items a batch goes at
once, never larger.

The callers (autopipeline.py for Redis commands, kafka/coalescing.py for produced records) own
what a batch means and how each item learns its outcome; this is only the collecting. Each
batch is sent in a task of the owner's (`spawn`: background.py), not of whichever caller
happened to add first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar

from chat4all_workers.background import Spawn

T = TypeVar("T")


@dataclass(eq=False)
class IterationBatcher(Generic[T]):
    """`send(batch)` runs in a task `spawn` owns, one per batch."""

    send: Callable[[list[T]], Coroutine[Any, Any, None]]
    _: KW_ONLY
    spawn: Spawn
    max_batch: int | None = None
    _queue: list[T] = field(default_factory=list, init=False)

    def add(self, item: T) -> None:
        self._queue.append(item)
        if self.max_batch is not None and len(self._queue) >= self.max_batch:
            self._flush()
        elif len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            self.spawn(self.send(batch))
