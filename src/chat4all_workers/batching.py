"""Items added in the same event-loop iteration, handed on together as one batch.

Why: hundreds of handlers run at once, so their small requests (a Redis command, a record to
produce) arrive together; sent one by one, each pays a round trip and the call's bookkeeping.
Collected until the loop has run every ready callback, they go out in one call. No timer, no
lingering: a lone item waits one loop iteration, no longer; at `max_batch` items a batch goes at
once, never larger.

The callers (autopipeline.py for Redis commands, kafka/coalescing.py for produced records) own
what a batch means and how each item learns its outcome; this is only the collecting. Each
batch is sent in a task of the owner's (`spawn`: background.py), not of whichever caller
happened to add first. An item's answer is a future of the batcher's loop (`future()`).

The batcher looks its loop up once. On Python 3.11 every `asyncio.get_running_loop()` makes a
getpid() system call (CPython checks that the loop was not inherited through a fork; 3.12 keeps
the loop in the thread state and makes none): 0.76 µs a call on the 2-core machine of
bench/router.py, more than making the future itself, and the router made about seven a
message, on this path and the HTTP client's (channels/http.py keeps its loop the same way).
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
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)

    def future(self) -> asyncio.Future[Any]:
        """A new future of the loop this batcher works in: an item's answer."""
        return self._running_loop().create_future()

    def add(self, item: T) -> None:
        self._queue.append(item)
        if self.max_batch is not None and len(self._queue) >= self.max_batch:
            self._flush()
        elif len(self._queue) == 1:
            self._running_loop().call_soon(self._flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            self.spawn(self.send(batch))
