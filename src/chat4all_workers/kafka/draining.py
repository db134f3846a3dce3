"""How the engine stops taking work and hands back what it took: the drain.

The engine drains when told to stop, or after a handler's bug: the first bug stops fetching, the
other keys' handlers finish what they are doing under a deadline of their own (of the shutdown
budget, begun at the bug), finished work is committed, and only then does `run` raise the bug.

Handlers are cancelled at exactly two points, each the end of a bounded wait: here, at the
shutdown deadline's `drain_end` (deadline.py), and on a revocation (rebalance.py). Either way
`cancel` asks twice: a handler may take the first cancel as "finish what is under way", the
second means "now". Records of cancelled handlers are handed back uncommitted.

Everything that waits for a while in the engine (retry back-offs, `wait_unless_handed_back`)
waits on `wakeup`, which `interrupt()` sets, so a stop, a bug or a revocation is noticed at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.kafka.commits import Commits
from chat4all_workers.kafka.partitions import Assignment, Partition
from chat4all_workers.kafka.records import ConsumedRecord

log = logging.getLogger(__name__)


class Drain:
    def __init__(
        self, *, role: str, shutdown: ShutdownDeadline, on_interrupt: Callable[[], None]
    ) -> None:
        self._role = role
        # The process's deadline (begun when it stops); a bug drains on one of the same budget.
        self._shutdown = shutdown
        self._bug_deadline: ShutdownDeadline | None = None
        self._on_interrupt = on_interrupt
        self.stopping = asyncio.Event()  # the engine's `run` sets the process's own
        self.bug: Exception | None = None
        self.wakeup = asyncio.Event()
        self.cancelled = 0  # handlers cancelled at the drain deadline (their records handed back)
        self.handed_back = 0  # taken and left uncommitted when the engine stopped (redelivered)

    @property
    def draining(self) -> bool:
        return self.stopping.is_set() or self.bug is not None

    def hands_back(self, partition: Partition) -> bool:
        """Whether this partition's records are to be handed back: draining, or revoked."""
        return self.draining or not partition.owned

    def interrupt(self) -> None:
        """Wake everything that waits for a while (retry back-offs, the paused fetch loop)."""
        self.wakeup.set()
        self.wakeup = asyncio.Event()
        self._on_interrupt()

    def point(self, point: Callable[[ShutdownDeadline], float]) -> float:
        """A point of the shutdown deadline (deadline.py); after a bug, the earlier of the
        process's and the bug's own."""
        when = point(self._shutdown)
        if self._bug_deadline is not None:
            when = min(when, point(self._bug_deadline))
        return when

    def defer_bug(self, record: ConsumedRecord, exc: Exception) -> bool:
        """Whether this is the first bug, the one `run` raises once the other keys are done;
        the record stays unfinished (uncommitted), so the restarted role sees it again."""
        if self.bug is not None:
            log.error(
                "handler failed on %s-%d@%d as well: %r", record.topic, record.partition,
                record.offset, exc, exc_info=exc,
            )  # fmt: skip
            return False
        log.error(
            "handler failed on %s-%d@%d (%r); letting the other keys finish, then restarting",
            record.topic, record.partition, record.offset, exc,
        )  # fmt: skip
        self.bug = exc
        self._bug_deadline = ShutdownDeadline.begun_now(self._shutdown.budget_s)
        return True

    async def finish_in_flight(self, running: Collection[asyncio.Task[None]]) -> None:
        """Let running handlers finish until the drain deadline, then cancel the rest: the
        engine's cancellation point when stopping or after a bug."""
        if not running:
            return
        _, unfinished = await asyncio.wait(
            running, timeout=ShutdownDeadline.left_s(self.point(ShutdownDeadline.drain_end))
        )
        if unfinished:
            self.cancelled += len(unfinished)
            unwind_by = self.point(ShutdownDeadline.unwind_end)
            await cancel(unfinished, until=unwind_by, why="at the drain deadline", role=self._role)

    async def hand_back(
        self, consumer: AIOKafkaConsumer, commits: Commits, assignment: Assignment
    ) -> None:
        """Commit what finished and leave the group, both by the deadline's `handback_end` (or,
        when the supervisor cancelled the role there, its `cleanup_end`)."""
        until = self.point(ShutdownDeadline.handback_end)
        if asyncio.get_running_loop().time() >= until:
            until = self.point(ShutdownDeadline.cleanup_end)
        try:
            async with timeout_at(until):
                await commits.commit(consumer, assignment.partitions())
        except (KafkaError, TimeoutError) as exc:
            log.warning("%s: final offset commit failed; that work is redone: %r", self._role, exc)
        self.handed_back = sum(p.not_committed() for p in assignment.partitions())
        try:
            async with timeout_at(until):
                await consumer.stop()
        except TimeoutError:
            log.warning("%s: the Kafka consumer did not close by the shutdown deadline", self._role)


async def cancel(tasks: set[asyncio.Task[None]], *, until: float, why: str, role: str) -> None:
    """Cancel handler tasks, and wait for them to unwind until `until` (a loop time)."""
    log.warning(
        "%s: cancelling %d handler(s) still running %s; their records are handed back "
        "uncommitted",
        role, len(tasks), why,
    )  # fmt: skip
    for task in tasks:
        task.cancel()
    # A handler may take the first cancel as "finish what is under way": the router waits for
    # the answer of a request already written, to know whether it was sent. A quarter of the
    # time is its; a second cancel means "now" (the router records the send as in doubt), and
    # unwinding hundreds of handlers takes the rest.
    loop = asyncio.get_running_loop()
    patience = until if math.isinf(until) else loop.time() + (until - loop.time()) / 4
    _, stuck = await asyncio.wait(tasks, timeout=ShutdownDeadline.left_s(patience))
    if stuck:
        for task in stuck:
            task.cancel()
        _, stuck = await asyncio.wait(stuck, timeout=ShutdownDeadline.left_s(until))
    if stuck:
        log.error("%s: %d handler(s) ignored cancellation", role, len(stuck))
