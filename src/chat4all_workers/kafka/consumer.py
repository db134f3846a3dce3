"""The consumer engine every consuming role runs on: keyed concurrency with at-least-once commits.

Records that share a key (a conversation) are handled strictly one after another, in offset order;
records with different keys run concurrently, up to `max_in_flight` records fetched and not yet
finished. When that bound is reached the engine pauses fetching (`pause()`), and resumes as work
finishes, so memory stays bounded whatever the backlog.

Offsets are committed per partition up to the lowest record not yet finished, never past it: a
crash redelivers exactly the unfinished records and possibly some finished ones (handlers are
idempotent: they deduplicate).

What the handler raises decides the record's fate (see errors.py): RetryableError retries in place
with backoff, holding back only that key; PermanentError goes to `on_permanent` (the role
dead-letters it) and the record counts as finished; anything else is a bug. A bug does not take
the other keys down with it: fetching stops, the other keys' handlers finish what they are doing
(under the shutdown deadline's drain budget, counted from the bug), finished work is committed,
and only then does `run` raise the bug, for the supervisor to restart the role.

The engine cancels a running handler at exactly two points, each the end of a bounded wait:
- stopping (or after a bug): at the shutdown deadline's `drain_end` (deadline.py), handlers still
  running are cancelled; their records are handed back uncommitted;
- a rebalance: `on_partitions_revoked` first stops the revoked partitions' keys from starting
  another record, then waits up to a third of `kafka.rebalance_timeout_ms` for their running
  handlers to finish, cancels those still running, waits a sixth more for them to unwind, and
  commits what finished. Only then does it return, so the new owner (held in the group's join
  until every member has rejoined) never starts a key while this member still runs it. The other
  half of the rebalance timeout is left for noticing the rebalance (a heartbeat) and rejoining,
  so the member is not dropped from the group. Nothing unfinished is committed, and nothing of a
  revoked partition is committed after the revocation.
A handler that swallows cancellation, or a member whose session expired (the group already gave
its partitions away), is outside what this can promise; the router's send lease covers both.

Held records (`held()`, at the end of this module): a handler that waits on an outside condition
(the router's paused channel, a recipient's pair limit) enters `held()`, and while it waits its
key's records count against `kafka.max_held_records` instead of `max_in_flight`, so a thousand
records held for one paused channel do not stop the engine from fetching the other channel's.
Past that bound they count normally again, so memory stays bounded. A held record is still
unfinished: it holds its partition's commit position where it is, and a crash redelivers it
and everything after it (the handlers' dedup markers make that harmless). Such a handler waits
with `wait_unless_handed_back`, which returns at once when its record is to be handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace

from chat4all_workers.backoff import retry_delay_s
from chat4all_workers.config import KafkaSettings, SupervisorSettings
from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics, forget
from chat4all_workers.observability.tracing import context_from_headers, tracer

log = logging.getLogger(__name__)

Handler = Callable[[ConsumedRecord], Awaitable[None]]
PermanentHandler = Callable[[ConsumedRecord, PermanentError], Awaitable[None]]
Scope = tuple["_Partition", bytes]

_RETRY_BASE_S = 0.5
_RETRY_CAP_S = 30.0


class _Ownership(enum.Enum):
    OWNED = "owned"  # assigned: records start, finish and are committed
    REVOKING = "revoking"  # being revoked: nothing new starts; finishes still count
    GONE = "gone"  # revoked: late finishes of abandoned work move nothing


@dataclass(eq=False)
class _Partition:
    """Offsets of one assigned partition, in fetch order, and which of them are finished.

    Compared by identity: a partition revoked and assigned again is a new object, so late
    completions of abandoned work cannot move the new assignment's commit position.
    """

    tp: TopicPartition
    pending: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    commit_position: int | None = None
    committed: int | None = None
    ownership: _Ownership = _Ownership.OWNED
    # Records finished in order (below commit_position) that no commit has covered yet.
    finished_uncommitted: int = 0

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        if self.ownership is _Ownership.GONE:
            return
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            done = self.pending.popleft()
            self.finished.discard(done)
            self.commit_position = done + 1
            self.finished_uncommitted += 1

    def uncommitted(self) -> int | None:
        if self.commit_position is not None and self.commit_position != self.committed:
            return self.commit_position
        return None


@dataclass(frozen=True)
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
        max_in_flight: int | None = None,
        commit_interval_s: float = 1.0,
        drain: bool = False,
        shutdown: ShutdownDeadline | None = None,
    ) -> None:
        self._settings = settings
        self.topics = tuple(topics)
        self.group_id = group_id
        self.role = role
        self._handler = handler
        self._on_permanent = on_permanent
        self._metrics = metrics
        self.max_in_flight = max(1, max_in_flight or settings.max_in_flight)
        self._commit_interval_s = commit_interval_s
        self._drain = drain
        # The process's deadline (begun when it stops); a bug drains on one of the same budget.
        self._shutdown = shutdown or ShutdownDeadline(SupervisorSettings().shutdown_timeout_s)
        self._bug_deadline: ShutdownDeadline | None = None
        self._bug: Exception | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._queues: dict[Scope, deque[ConsumedRecord]] = {}
        self._workers: dict[Scope, asyncio.Task[None]] = {}
        self._in_flight = 0
        self.max_held_records = settings.max_held_records
        self._held = 0
        self._holds: dict[Scope, _Hold] = {}
        self._capacity = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._paused = False
        self._finished_total = 0
        self._committed_total = 0
        self._committed_before_drain: int | None = None
        self._handed_back = 0
        self._cancelled = 0
        self._last_commit: float | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()

    def stats(self) -> ConsumerStats:
        return ConsumerStats(
            group_id=self.group_id,
            topics=self.topics,
            assigned=len(self._partitions),
            in_flight=self._in_flight,
            held=self._held,
            paused=self._paused,
            finished_total=self._finished_total,
            last_commit_age_s=None
            if self._last_commit is None
            else time.monotonic() - self._last_commit,
            lag=self._lag(),
            committed_total=self._committed_total,
            committed_in_drain=0
            if self._committed_before_drain is None
            else self._committed_total - self._committed_before_drain,
            handed_back=self._handed_back,
            cancelled=self._cancelled,
        )

    def _lag(self) -> int | None:
        consumer = self._consumer
        if consumer is None:
            return None
        lags = [_lag_of(consumer, p) for p in self._partitions.values()]
        known = [lag for lag in lags if lag is not None]
        return sum(known) if known else None

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set (or, in drain mode, until caught up), then hand back
        unfinished work: only finished records are committed. Raises a handler's bug once the
        other keys have finished and their work is committed."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{self._settings.client_id}-{self.role}",
            enable_auto_commit=False,
            auto_offset_reset=self._settings.auto_offset_reset,
            max_poll_interval_ms=self._settings.max_poll_interval_ms,
            session_timeout_ms=self._settings.session_timeout_ms,
            rebalance_timeout_ms=self._settings.rebalance_timeout_ms,
            request_timeout_ms=self._settings.request_timeout_ms,
            heartbeat_interval_ms=max(1000, self._settings.session_timeout_ms // 3),
        )
        self._consumer = consumer
        self._stopping = stopping
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        await consumer.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                committer = tasks.create_task(self._commit_periodically())
                waker = tasks.create_task(self._wake_on(stopping))
                try:
                    await self._fetch_until_draining()
                    await self._finish_in_flight()
                finally:
                    committer.cancel()
                    waker.cancel()
        finally:
            self._tasks = None
            await self._hand_back(consumer)
            self._consumer = None
        if self._bug is not None:
            raise self._bug

    def _draining(self) -> bool:
        return self._stopping.is_set() or self._bug is not None

    def _interrupt(self) -> None:
        """Wake everything that waits for a while (retry back-offs, the paused fetch loop), so
        a stop, a bug or a revocation is noticed at once."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        self._capacity.set()

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._drain_begins()
        self._interrupt()

    def _drain_begins(self) -> None:
        """From here on, commits count as the drain's (`committed_in_drain`)."""
        if self._committed_before_drain is None:
            self._committed_before_drain = self._committed_total

    def _point(self, point: Callable[[ShutdownDeadline], float]) -> float:
        """A point of the shutdown deadline (deadline.py); after a bug, the earlier of the
        process's and the bug's own."""
        when = point(self._shutdown)
        if self._bug_deadline is not None:
            when = min(when, point(self._bug_deadline))
        return when

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_until_draining(self) -> None:
        consumer = self._require_consumer()
        while not self._draining():
            room = self.max_in_flight - self._in_flight
            if room <= 0:
                self._pause(consumer)
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._capacity.wait()
                # Keep polling while paused, or the group thinks this member died. Paused
                # partitions return nothing; a partition assigned since the pause may return a
                # record, which is accepted (never dropped: that would commit past it).
                batch = await consumer.getmany(timeout_ms=0, max_records=1)
            else:
                self._resume(consumer)
                batch = await consumer.getmany(
                    timeout_ms=200, max_records=min(room, self._settings.fetch_max_records)
                )
            if consumer.assignment():
                self.ready.set()
            for tp, records in batch.items():
                self._accept(tp, records)
            if self._drain and not batch and await self._caught_up():
                return

    async def _caught_up(self) -> bool:
        consumer = self._require_consumer()
        assigned = list(consumer.assignment())
        if not assigned or self._in_flight or self._held:
            return False
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    def _accept(self, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> None:
        partition = self._partitions.get(tp)
        if partition is None:  # fetched just before a revocation; the new owner has it
            return
        tasks = self._require_tasks()
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
                self._count_queued(scope)
                continue
            self._in_flight += 1
            self._queues[scope] = deque([record])
            self._workers[scope] = tasks.create_task(self._work_through(scope))
        self._metrics.in_flight.set({"role": self.role}, self._in_flight + self._held)

    # -- processing -------------------------------------------------------------------------

    async def _work_through(self, scope: Scope) -> None:
        """Handle one key's records in order; stop early when draining or revoked."""
        partition, _ = scope
        queue = self._queues[scope]
        _key_worker.set((self, scope))  # this task's own context: what `held()` finds
        try:
            while queue and self._owns(partition) and not self._draining():
                record = queue[0]
                try:
                    handled = await self._handle(partition, record)
                except Exception as exc:  # noqa: BLE001 - a bug: deferred (raised by run)
                    self._defer_bug(record, exc)
                    break
                if not handled:  # stopping or revoked while a retry was pending: hand back
                    break
                self._finish(partition, record)
                queue.popleft()
        finally:
            abandoned = len(queue)
            del self._queues[scope]
            del self._workers[scope]
            if abandoned:
                self._release(abandoned)

    def _defer_bug(self, record: ConsumedRecord, exc: Exception) -> None:
        """The first bug stops fetching and is raised by `run` once the other keys are done;
        the record stays unfinished (uncommitted), so the restarted role sees it again."""
        if self._bug is not None:
            log.error(
                "handler failed on %s-%d@%d as well: %r", record.topic, record.partition,
                record.offset, exc, exc_info=exc,
            )  # fmt: skip
            return
        log.error(
            "handler failed on %s-%d@%d (%r); letting the other keys finish, then restarting",
            record.topic, record.partition, record.offset, exc,
        )  # fmt: skip
        self._bug = exc
        self._bug_deadline = ShutdownDeadline.begun_now(self._shutdown.budget_s)
        self._drain_begins()
        self._interrupt()

    def _owns(self, partition: _Partition) -> bool:
        return partition.ownership is _Ownership.OWNED

    def _handing_back(self, partition: _Partition) -> bool:
        return self._draining() or not self._owns(partition)

    async def _handle(self, partition: _Partition, record: ConsumedRecord) -> bool:
        """Run the handler until it finishes the record; False if handed back (draining or
        revoked) while a retry was pending."""
        started = time.perf_counter()
        attempt = 0
        with tracer.start_as_current_span(
            f"{self.role} process",
            context=context_from_headers(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
            },
        ):
            while True:
                try:
                    try:
                        await self._handler(record)
                    except PermanentError as exc:
                        # Dead-lettering can meet an outage too (the breaker open): then the
                        # record is retried like any other, not taken for a bug.
                        await self._on_permanent(record, exc)
                    break
                except RetryableError as exc:
                    if self._draining() or not self._owns(partition):
                        return False
                    delay = retry_delay_s(
                        attempt,
                        base_s=_RETRY_BASE_S,
                        cap_s=_RETRY_CAP_S,
                        retry_after_s=exc.retry_after_s,
                    )
                    attempt += 1
                    log.warning(
                        "retrying record %s-%d@%d in %.2fs: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        delay,
                        exc,
                    )
                    wakeup = self._wakeup
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await wakeup.wait()
                    if self._draining() or not self._owns(partition):
                        return False
        self._metrics.processing_duration.observe(
            {"role": self.role}, time.perf_counter() - started
        )
        return True

    def _finish(self, partition: _Partition, record: ConsumedRecord) -> None:
        partition.finish(record.offset)
        self._finished_total += 1
        self._release(1)

    def _release(self, count: int) -> None:
        # The in-flight gauge is refreshed per fetched batch and per commit interval, not here:
        # per record it cost more than the bookkeeping it reports.
        self._in_flight -= count
        self._capacity.set()

    async def _finish_in_flight(self) -> None:
        """Let running handlers finish until the drain deadline, then cancel the rest: the
        engine's cancellation point when stopping or after a bug."""
        running = list(self._workers.values())
        if not running:
            return
        _, unfinished = await asyncio.wait(
            running, timeout=ShutdownDeadline.left_s(self._point(ShutdownDeadline.drain_end))
        )
        if unfinished:
            self._cancelled += len(unfinished)
            unwind_by = self._point(ShutdownDeadline.unwind_end)
            await self._cancel(unfinished, until=unwind_by, why="at the drain deadline")

    async def _cancel(self, tasks: set[asyncio.Task[None]], *, until: float, why: str) -> None:
        log.warning(
            "%s: cancelling %d handler(s) still running %s; their records are handed back "
            "uncommitted",
            self.role, len(tasks), why,
        )  # fmt: skip
        for task in tasks:
            task.cancel()
        # A handler may take the first cancel as "finish what is under way": the router waits
        # for the answer of a request already written, to know whether it was sent. A quarter
        # of the time is its; a second cancel means "now" (the router records the send as in
        # doubt), and unwinding hundreds of handlers takes the rest.
        loop = asyncio.get_running_loop()
        patience = until if math.isinf(until) else loop.time() + (until - loop.time()) / 4
        _, stuck = await asyncio.wait(tasks, timeout=ShutdownDeadline.left_s(patience))
        if stuck:
            for task in stuck:
                task.cancel()
            _, stuck = await asyncio.wait(stuck, timeout=ShutdownDeadline.left_s(until))
        if stuck:
            log.error("%s: %d handler(s) ignored cancellation", self.role, len(stuck))

    def _pause(self, consumer: AIOKafkaConsumer) -> None:
        consumer.pause(*consumer.assignment())  # every time: the assignment may have changed
        self._paused = True

    def _resume(self, consumer: AIOKafkaConsumer) -> None:
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False

    # -- committing -------------------------------------------------------------------------

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._commit_interval_s)
            try:
                await self._commit_finished(self._partitions.values())
            except (CommitFailedError, KafkaError) as exc:
                log.warning("offset commit failed, will retry: %r", exc)
            self._report_lag()
            self._metrics.in_flight.set({"role": self.role}, self._in_flight + self._held)

    def _report_lag(self) -> None:
        """`kafka_consumer_lag`: records between what is committed (or about to be) and the log
        end, for every partition this member owns, refreshed even when nothing arrives."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp, partition in self._partitions.items():
            lag = _lag_of(consumer, partition)
            if lag is not None:
                self._metrics.consumer_lag.set(_lag_labels(tp), lag)

    async def _commit_finished(self, partitions: Iterable[_Partition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        wanted = list(partitions)
        offsets = {p.tp: pos for p in wanted if (pos := p.uncommitted()) is not None}
        if not offsets:
            return
        counts = {p.tp: p.finished_uncommitted for p in wanted if p.tp in offsets}
        await consumer.commit(offsets)
        for p in wanted:
            if p.tp in offsets:
                # A commit of a position already passed (a concurrent one finished first)
                # counts nothing again.
                if p.committed is None or offsets[p.tp] > p.committed:
                    covered = min(counts[p.tp], p.finished_uncommitted)
                    p.finished_uncommitted -= covered
                    self._committed_total += covered
                p.committed = offsets[p.tp]
        self._last_commit = time.monotonic()

    async def _hand_back(self, consumer: AIOKafkaConsumer) -> None:
        """Commit what finished and leave the group, both by the deadline's `handback_end` (or,
        when the supervisor cancelled the role there, its `cleanup_end`)."""
        until = self._point(ShutdownDeadline.handback_end)
        if asyncio.get_running_loop().time() >= until:
            until = self._point(ShutdownDeadline.cleanup_end)
        try:
            async with timeout_at(until):
                await self._commit_finished(list(self._partitions.values()))
        except (KafkaError, TimeoutError) as exc:
            log.warning("%s: final offset commit failed; that work is redone: %r", self.role, exc)
        self._handed_back = sum(
            len(p.pending) + p.finished_uncommitted for p in self._partitions.values()
        )
        try:
            async with timeout_at(until):
                await consumer.stop()
        except TimeoutError:
            log.warning("%s: the Kafka consumer did not close by the shutdown deadline", self.role)

    # -- rebalancing (called by the listener) -----------------------------------------------

    async def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Stop the revoked partitions' keys, wait (bounded) for their running handlers, cancel
        the rest, commit what finished; see the module docstring."""
        leaving = [p for tp in revoked if (p := self._partitions.pop(tp, None)) is not None]
        for partition in leaving:
            partition.ownership = _Ownership.REVOKING
        self._interrupt()  # their retry back-offs hand back now
        running = {task for (partition, _), task in self._workers.items() if partition in leaving}
        if running:
            loop = asyncio.get_running_loop()
            rebalance_s = self._settings.rebalance_timeout_ms / 1000
            finish_by = min(loop.time() + rebalance_s / 3, self._point(ShutdownDeadline.drain_end))
            _, unfinished = await asyncio.wait(running, timeout=ShutdownDeadline.left_s(finish_by))
            if unfinished:
                unwind_by = min(
                    loop.time() + rebalance_s / 6, self._point(ShutdownDeadline.unwind_end)
                )
                await self._cancel(unfinished, until=unwind_by, why="for a revocation")
        try:
            await self._commit_finished(leaving)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit on revocation failed; the new owner redoes that work: %r", exc)
        for partition in leaving:
            partition.ownership = _Ownership.GONE
            forget(self._metrics.consumer_lag, _lag_labels(partition.tp))  # the new owner's now
        self._paused = False

    def _on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)
        if assigned:
            self.ready.set()

    def _require_consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "the engine is not running"
        return self._consumer

    def _require_tasks(self) -> asyncio.TaskGroup:
        assert self._tasks is not None, "the engine is not running"
        return self._tasks

    # -- held records (`held()`) --------------------------------------------------------------

    def _hold(self, scope: Scope) -> None:
        """The key's records move from max_in_flight to max_held_records, if they fit."""
        hold = self._holds.get(scope)
        if hold is not None:  # the same key held twice (a message's two channels)
            hold.depth += 1
            return
        queue = self._queues.get(scope)
        count = len(queue) if queue is not None else 0
        if self._held + count > self.max_held_records:
            count = 0  # no room: they count as in flight, as without `held()`
        self._holds[scope] = _Hold(depth=1, count=count)
        self._in_flight -= count
        self._held += count
        if count:
            self._capacity.set()

    def _unhold(self, scope: Scope) -> None:
        hold = self._holds[scope]
        hold.depth -= 1
        if hold.depth:
            return
        del self._holds[scope]
        self._held -= hold.count
        self._in_flight += hold.count

    def _count_queued(self, scope: Scope) -> None:
        """One more record queued behind a key's head: held with the key while there is room."""
        hold = self._holds.get(scope)
        if hold is not None and self._held < self.max_held_records:
            hold.count += 1
            self._held += 1
        else:
            self._in_flight += 1


@dataclass
class _Hold:
    depth: int  # `held()` blocks entered for this key and not left
    count: int  # its records counted as held


_key_worker: contextvars.ContextVar[tuple[ConsumerEngine, Scope] | None] = contextvars.ContextVar(
    "chat4all_key_worker", default=None
)


@contextlib.asynccontextmanager
async def held() -> AsyncIterator[None]:
    """While inside, this key's records count against `kafka.max_held_records`, not
    `max_in_flight`: for a handler that waits on an outside condition, so the wait does not
    starve other keys. Outside a key worker of an engine (a test calling the handler directly),
    it does nothing."""
    current = _key_worker.get()
    if current is None:
        yield
        return
    engine, scope = current
    engine._hold(scope)
    try:
        yield
    finally:
        engine._unhold(scope)


def _lag_of(consumer: AIOKafkaConsumer, partition: _Partition) -> int | None:
    """Records between what is committed (or about to be) and the log end; None while unknown."""
    highwater: int | None = consumer.highwater(partition.tp)
    done = (
        partition.commit_position if partition.commit_position is not None else partition.committed
    )
    if highwater is None or done is None:
        return None
    return max(0, highwater - done)


async def wait_unless_handed_back(delay_s: float) -> bool:
    """Sleep up to `delay_s` in a key worker; True, at once, when this key's record is being
    handed back meanwhile (its partition revoked, the engine stopping or stopped by a bug): for a
    handler that waits a long while on an outside condition (the router waiting for the
    provider's word), so a revocation does not wait for it (a third of
    `kafka.rebalance_timeout_ms`) and then cancel it. Outside a key worker, a plain sleep."""
    current = _key_worker.get()
    if current is None:
        await asyncio.sleep(delay_s)
        return False
    engine, (partition, _) = current
    if engine._handing_back(partition):
        return True
    wakeup = engine._wakeup
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await wakeup.wait()
    return engine._handing_back(partition)


def _lag_labels(tp: TopicPartition) -> dict[str, str]:
    return {"topic": tp.topic, "partition": str(tp.partition)}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Awaits only the engine's own handler tasks and a commit, never the fetch loop (STYLE 10):
    the fetch loop keeps polling (and heartbeating) while a revocation waits."""

    def __init__(self, engine: ConsumerEngine) -> None:
        self._engine = engine

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._engine._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._engine._on_assigned(assigned)
