"""The consumer engine every consuming role runs on: keyed concurrency with at-least-once commits.

Records that share a key (a conversation) are handled strictly one after another, in offset order;
records with different keys run concurrently, up to `max_in_flight` records fetched and not yet
finished (budget.py). When that bound is reached the engine pauses fetching (`pause()`), and
resumes as work finishes, so memory stays bounded whatever the backlog. Offsets are committed per
partition up to the lowest record not yet finished, never past it (partitions.py, commits.py).

What the handler raises decides the record's fate (handling.py): RetryableError retries in place
with backoff, holding back only that key; PermanentError goes to `on_permanent` (the role
dead-letters it) and the record counts as finished; anything else is a bug. A bug does not take
the other keys down with it: fetching stops, the other keys' handlers finish what they are doing,
finished work is committed, and only then does `run` raise the bug, for the supervisor to restart
the role (draining.py).

The engine is the orchestrator over those parts: it fetches, dispatches each record to its key's
worker, and has it handled (handling.py). It cancels a running handler at exactly two points,
each the end of a bounded wait: at the shutdown deadline's drain end (draining.py) and on a
revocation (rebalance.py). A handler waiting on an outside condition says so with `held()`
(held.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from chat4all_workers.config import KafkaSettings, SupervisorSettings
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.budget import Budget
from chat4all_workers.kafka.commits import Commits, report_lag, total_lag
from chat4all_workers.kafka.draining import Drain
from chat4all_workers.kafka.handling import Handler, Handling, PermanentHandler
from chat4all_workers.kafka.held import KeyWorker, enter_key_worker
from chat4all_workers.kafka.partitions import Assignment, Partition, Scope
from chat4all_workers.kafka.rebalance import Listener
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics

log = logging.getLogger(__name__)

# Full this long (records held by a paused account, a slow provider), the engine pauses its
# partitions and polls, so the group keeps it (max.poll.interval.ms).
_FULL_BEFORE_PAUSE_S = 5.0


@frozen
class ConsumerStats:
    """The engine as it describes itself (STYLE 11): `/readyz` and the log lines an operator
    follows (reporting.py) read it. Counts are since this engine was created."""

    group_id: str
    topics: tuple[str, ...]
    assigned: int
    in_flight: int
    held: int  # of the records taken, those counted against max_held_records (`held()`)
    paused: bool
    finished_total: int
    last_commit_age_s: float | None
    # Records between the commit position (finished work, committed or about to be) and the
    # log end, over the partitions owned now; None until a fetch told the log end.
    lag: int | None = None
    committed_total: int = 0  # records whose offsets a commit covered
    committed_in_drain: int = 0  # of those, committed after the stop (or a bug) began the drain
    handed_back: int = 0  # taken and left uncommitted when the engine stopped (redelivered)
    cancelled: int = 0  # handlers cancelled at the drain deadline (their records handed back)


class ConsumerEngine:
    def __init__(
        self,
        *,
        settings: KafkaSettings,
        topics: Sequence[str],
        group_id: str,
        role: str,
        handler: Handler,
        on_permanent: PermanentHandler,
        metrics: Metrics,
        outages: tuple[type[Exception], ...] = (),
        max_in_flight: int | None = None,
        commit_interval_s: float = 1.0,
        drain: bool = False,
        shutdown: ShutdownDeadline | None = None,
    ) -> None:
        self._settings = settings
        self.topics = tuple(topics)
        self.group_id = group_id
        self.role = role
        self._metrics = metrics
        self._commit_interval_s = commit_interval_s
        self._until_caught_up = drain
        self._budget = Budget(
            max_in_flight=max(1, max_in_flight or settings.max_in_flight),
            max_held_records=settings.max_held_records,
        )
        self._drain = Drain(
            role=role,
            shutdown=shutdown or ShutdownDeadline(SupervisorSettings().shutdown_timeout_s),
            on_interrupt=self._budget.wake,
        )
        # A backing service unreachable (`outages`: the client libraries' own errors) is
        # retried in place, like a RetryableError.
        self._handling = Handling(
            role=role,
            handler=handler,
            on_permanent=on_permanent,
            outages=outages,
            metrics=metrics,
            drain=self._drain,
        )
        self._assignment = Assignment()
        self._commits = Commits()
        self._consumer: AIOKafkaConsumer | None = None
        self._queues: dict[Scope, deque[ConsumedRecord]] = {}
        self._workers: dict[Scope, asyncio.Task[None]] = {}
        self._paused = False
        self._finished_total = 0
        self.ready = asyncio.Event()

    def stats(self) -> ConsumerStats:
        consumer = self._consumer
        return ConsumerStats(
            group_id=self.group_id,
            topics=self.topics,
            assigned=len(self._assignment),
            in_flight=self._budget.in_flight,
            held=self._budget.held,
            paused=self._paused,
            finished_total=self._finished_total,
            last_commit_age_s=self._commits.last_commit_age_s(),
            lag=None if consumer is None else total_lag(consumer, self._assignment.partitions()),
            committed_total=self._commits.total,
            committed_in_drain=self._commits.in_drain,
            handed_back=self._drain.handed_back,
            cancelled=self._drain.cancelled,
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set (or, in drain mode, until caught up), then hand back
        unfinished work: only finished records are committed. Raises a handler's bug once the
        other keys have finished and their work is committed."""
        consumer = self._new_consumer()
        self._consumer = consumer
        self._drain.stopping = stopping
        consumer.subscribe(list(self.topics), listener=self._listener(consumer))
        await consumer.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                committer = tasks.create_task(self._commit_periodically(consumer))
                waker = tasks.create_task(self._wake_on(stopping))
                try:
                    await self._fetch_until_draining(consumer, tasks)
                    await self._drain.finish_in_flight(list(self._workers.values()))
                finally:
                    committer.cancel()
                    waker.cancel()
        finally:
            await self._drain.hand_back(consumer, self._commits, self._assignment)
            self._consumer = None
        if self._drain.bug is not None:
            raise self._drain.bug

    def _new_consumer(self) -> AIOKafkaConsumer:
        settings = self._settings
        return AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{settings.client_id}-{self.role}",
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
            request_timeout_ms=settings.request_timeout_ms,
            heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 3),
        )

    def _listener(self, consumer: AIOKafkaConsumer) -> Listener:
        return Listener(
            consumer=consumer,
            assignment=self._assignment,
            drain=self._drain,
            commits=self._commits,
            running_on=self._running_on,
            rebalance_timeout_ms=self._settings.rebalance_timeout_ms,
            metrics=self._metrics,
            role=self.role,
            ready=self.ready,
            after_revocation=self._forget_pause,
        )

    def _running_on(self, partitions: Sequence[Partition]) -> set[asyncio.Task[None]]:
        return {task for (partition, _), task in self._workers.items() if partition in partitions}

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._drain_begins()

    def _drain_begins(self) -> None:
        """Stop taking work (the stop or the first bug): commits from here on count as the
        drain's, and whatever waits for a while looks again at once."""
        self._commits.mark_drain()
        self._drain.interrupt()

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_until_draining(
        self, consumer: AIOKafkaConsumer, tasks: asyncio.TaskGroup
    ) -> None:
        loop = asyncio.get_running_loop()
        full_since: float | None = None
        while not self._drain.draining:
            room = self._budget.room
            if room <= 0:
                now = loop.time()
                full_since = now if full_since is None else full_since
                if now - full_since < _FULL_BEFORE_PAUSE_S:
                    # Full for a moment (the common case under load): wait for room without
                    # pausing, so the client's prefetched records are there when it comes (a
                    # pause drops them, and the resume costs a fetch round trip of idle time:
                    # at 1,000 in flight, half the router's throughput).
                    await self._budget.wait_for_capacity(timeout_s=_FULL_BEFORE_PAUSE_S)
                    continue
                self._pause(consumer)
                await self._budget.wait_for_capacity(timeout_s=0.5)
                # Keep polling while paused, or the group thinks this member died. Paused
                # partitions return nothing; a partition assigned since the pause may return a
                # record, which is accepted (never dropped: that would commit past it).
                batch = await consumer.getmany(timeout_ms=0, max_records=1)
            else:
                full_since = None
                self._resume(consumer)
                batch = await consumer.getmany(
                    timeout_ms=200, max_records=min(room, self._settings.fetch_max_records)
                )
            if consumer.assignment():
                self.ready.set()
            for tp, records in batch.items():
                self._accept(tasks, tp, records)
            if self._until_caught_up and not batch and await self._caught_up(consumer):
                return

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        assigned = list(consumer.assignment())
        if not assigned or self._budget.in_flight or self._budget.held:
            return False
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    def _pause(self, consumer: AIOKafkaConsumer) -> None:
        consumer.pause(*consumer.assignment())  # every time: the assignment may have changed
        self._paused = True

    def _resume(self, consumer: AIOKafkaConsumer) -> None:
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False

    def _forget_pause(self) -> None:
        """After a revocation: the new assignment starts unpaused."""
        self._paused = False

    # -- dispatching per key ----------------------------------------------------------------

    def _accept(
        self, tasks: asyncio.TaskGroup, tp: TopicPartition, records: Sequence[ConsumerRecord]
    ) -> None:
        partition = self._assignment.get(tp)
        if partition is None:  # fetched just before a revocation; the new owner has it
            return
        for raw in records:
            record = ConsumedRecord.from_aiokafka(raw)
            partition.add(record.offset)
            if record.key is None:
                # No key, no order to keep: each such record is its own queue.
                scope = (partition, b"\x00offset:%d" % record.offset)
            else:
                scope = (partition, record.key)
            queue = self._queues.get(scope)
            if queue is not None:
                queue.append(record)
                self._budget.queue_behind(scope)
                continue
            self._budget.take()
            self._queues[scope] = deque([record])
            self._workers[scope] = tasks.create_task(self._work_through(scope))
        self._metrics.in_flight.set({"role": self.role}, self._budget.taken)

    async def _work_through(self, scope: Scope) -> None:
        """Handle one key's records in order; stop early when draining or revoked."""
        partition, _ = scope
        queue = self._queues[scope]
        enter_key_worker(
            KeyWorker(budget=self._budget, drain=self._drain, scope=scope, queue=queue)
        )
        try:
            while queue and not self._drain.hands_back(partition):
                record = queue[0]
                try:
                    handled = await self._handling.handle(partition, record)
                except Exception as exc:  # noqa: BLE001 - a bug: deferred (raised by run)
                    if self._drain.defer_bug(record, exc):
                        self._drain_begins()
                    break
                if not handled:  # stopping or revoked while a retry was pending: hand back
                    break
                partition.finish(record.offset)
                self._finished_total += 1
                self._budget.release(1)
                queue.popleft()
                if queue:
                    self._budget.promote(scope)
        finally:
            abandoned = len(queue)
            del self._queues[scope]
            del self._workers[scope]
            self._budget.drop(scope, abandoned)

    # -- committing -------------------------------------------------------------------------

    async def _commit_periodically(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await asyncio.sleep(self._commit_interval_s)
            try:
                await self._commits.commit(consumer, self._assignment.partitions())
            except (CommitFailedError, KafkaError) as exc:
                log.warning("offset commit failed, will retry: %r", exc)
            report_lag(self._metrics, consumer, self._assignment.partitions())
            self._metrics.in_flight.set({"role": self.role}, self._budget.taken)
