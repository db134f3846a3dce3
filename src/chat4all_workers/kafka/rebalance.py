"""The rebalance listener: a revocation hands the revoked partitions' keys back before returning.

`on_partitions_revoked` first stops the revoked partitions' keys from starting another record,
then waits up to a third of `kafka.rebalance_timeout_ms` for their running handlers to finish,
cancels those still running (draining.py's `cancel`), waits a sixth more for them to unwind,
and commits what finished. Only then does it return, so the new owner (held in the group's join
until every member has rejoined) never starts a key while this member still runs it. The other
half of the rebalance timeout is left for noticing the rebalance (a heartbeat) and rejoining, so
the member is not dropped from the group. Nothing unfinished is committed, and nothing of a
revoked partition is committed after the revocation (partitions.py: it is gone).

A handler that swallows cancellation, or a member whose session expired (the group already gave
its partitions away), is outside what this can promise; the router's send lease covers both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.kafka.commits import Commits, forget_lag
from chat4all_workers.kafka.draining import Drain, cancel
from chat4all_workers.kafka.partitions import Assignment, Ownership, Partition
from chat4all_workers.observability.metrics import Metrics

log = logging.getLogger(__name__)

RunningOn = Callable[[Sequence[Partition]], set[asyncio.Task[None]]]


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Awaits only the engine's own handler tasks and a commit, never the fetch loop (STYLE 10):
    the fetch loop keeps polling (and heartbeating) while a revocation waits."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        assignment: Assignment,
        drain: Drain,
        commits: Commits,
        running_on: RunningOn,
        rebalance_timeout_ms: int,
        metrics: Metrics,
        role: str,
        ready: asyncio.Event,
        after_revocation: Callable[[], None],
    ) -> None:
        self._consumer = consumer
        self._assignment = assignment
        self._drain = drain
        self._commits = commits
        self._running_on = running_on  # the handler tasks of these partitions' keys
        self._rebalance_s = rebalance_timeout_ms / 1000
        self._metrics = metrics
        self._role = role
        self._ready = ready
        self._after_revocation = after_revocation

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        leaving = self._assignment.revoke(revoked)
        self._drain.interrupt()  # their retry back-offs hand back now
        running = self._running_on(leaving)
        if running:
            await self._finish_or_cancel(running)
        try:
            await self._commits.commit(self._consumer, leaving)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit on revocation failed; the new owner redoes that work: %r", exc)
        for partition in leaving:
            partition.ownership = Ownership.GONE
            forget_lag(self._metrics, partition.tp)  # the new owner's now
        self._after_revocation()

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._assignment.assign(assigned)
        if assigned:
            self._ready.set()

    async def _finish_or_cancel(self, running: set[asyncio.Task[None]]) -> None:
        """Wait a third of the rebalance timeout for the revoked keys' handlers, then cancel
        the rest and give them a sixth more (never past the shutdown deadline's points)."""
        loop = asyncio.get_running_loop()
        finish_by = min(
            loop.time() + self._rebalance_s / 3, self._drain.point(ShutdownDeadline.drain_end)
        )
        _, unfinished = await asyncio.wait(running, timeout=ShutdownDeadline.left_s(finish_by))
        if unfinished:
            unwind_by = min(
                loop.time() + self._rebalance_s / 6, self._drain.point(ShutdownDeadline.unwind_end)
            )
            await cancel(unfinished, until=unwind_by, why="for a revocation", role=self._role)
