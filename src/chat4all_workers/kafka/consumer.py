"""The consumer engine every consuming role runs on: keyed concurrency with at-least-once commits.

Records that share a key (a conversation) are handled strictly one after another, in offset order;
records with different keys run concurrently, up to `max_in_flight` records fetched and not yet
finished. When that bound is reached the engine pauses fetching (`pause()`), and resumes as work
finishes, so memory stays bounded whatever the backlog.

Offsets are committed per partition up to the lowest record not yet finished, never past it: a
crash redelivers exactly the unfinished records and possibly some finished ones (handlers are
idempotent: they deduplicate). On a rebalance, finished work of the revoked partitions is
committed and their unfinished work is abandoned without committing, for the new owner to redo.

What the handler raises decides the record's fate (see errors.py): RetryableError retries in place
with backoff, holding back only that key; PermanentError goes to `on_permanent` (the role
dead-letters it) and the record counts as finished; anything else is a bug and crashes the engine,
so the supervisor restarts it from the last commit.

Held records (`held()`, at the end of this module): a handler that waits on an outside condition
(the router's paused channel, a recipient's pair limit) enters `held()`, and while it waits its
key's records count against `kafka.max_held_records` instead of `max_in_flight`, so a thousand
records held for one paused channel do not stop the engine from fetching the other channel's.
Past that bound they count normally again, so memory stays bounded. A held record is still
unfinished: it holds its partition's commit position where it is, and a crash redelivers it
and everything after it (the handlers' dedup markers make that harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace

from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import KafkaSettings
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics, forget
from chat4all_workers.observability.tracing import context_from_headers, tracer

log = logging.getLogger(__name__)

Handler = Callable[[ConsumedRecord], Awaitable[None]]
PermanentHandler = Callable[[ConsumedRecord, PermanentError], Awaitable[None]]

_RETRY_BASE_S = 0.5
_RETRY_CAP_S = 30.0


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

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            done = self.pending.popleft()
            self.finished.discard(done)
            self.commit_position = done + 1

    def uncommitted(self) -> int | None:
        if self.commit_position is not None and self.commit_position != self.committed:
            return self.commit_position
        return None


_Scope = tuple[_Partition, bytes]  # one key's records of one partition, handled in order


@dataclass(frozen=True)
class ConsumerStats:
    group_id: str
    topics: tuple[str, ...]
    assigned: int
    in_flight: int
    held: int  # of the records taken, those counted against max_held_records (`held()`)
    paused: bool
    finished_total: int
    last_commit_age_s: float | None


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
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._queues: dict[tuple[_Partition, bytes], deque[ConsumedRecord]] = {}
        self._in_flight = 0
        self.max_held_records = settings.max_held_records
        self._held = 0
        self._holds: dict[_Scope, _Hold] = {}
        self._capacity = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._paused = False
        self._finished_total = 0
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
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set (or, in drain mode, until caught up), then hand back
        unfinished work: only finished records are committed."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{self._settings.client_id}-{self.role}",
            enable_auto_commit=False,
            auto_offset_reset=self._settings.auto_offset_reset,
            max_poll_interval_ms=self._settings.max_poll_interval_ms,
            session_timeout_ms=self._settings.session_timeout_ms,
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
                await self._fetch_until(stopping)
                await self._idle.wait()  # in-flight work finishes (or is cancelled at timeout)
                committer.cancel()
        finally:
            self._tasks = None
            with contextlib.suppress(KafkaError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._commit_finished()
            async with asyncio.timeout(10):
                await consumer.stop()
            self._consumer = None

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_until(self, stopping: asyncio.Event) -> None:
        consumer = self._require_consumer()
        while not stopping.is_set():
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
            self._idle.clear()
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
            tasks.create_task(self._work_through(scope))
        self._metrics.in_flight.set({"role": self.role}, self._in_flight + self._held)

    # -- processing -------------------------------------------------------------------------

    async def _work_through(self, scope: tuple[_Partition, bytes]) -> None:
        """Handle one key's records in order; stop early if the partition is revoked."""
        partition, _ = scope
        queue = self._queues[scope]
        _key_worker.set((self, scope))  # this task's own context: what `held()` finds
        try:
            while queue and self._owns(partition) and not self._stopping.is_set():
                record = queue[0]
                if await self._handle(partition, record):
                    self._finish(partition, record)
                else:  # stopping while a retry was pending: hand it back uncommitted
                    break
                queue.popleft()
        finally:
            abandoned = len(queue)
            del self._queues[scope]
            if abandoned:
                self._release(abandoned)

    def _owns(self, partition: _Partition) -> bool:
        return self._partitions.get(partition.tp) is partition

    async def _handle(self, partition: _Partition, record: ConsumedRecord) -> bool:
        """Run the handler until it finishes the record; False if handed back (stopping or
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
                    await self._handler(record)
                    break
                except PermanentError as exc:
                    await self._on_permanent(record, exc)
                    break
                except RetryableError as exc:
                    if self._stopping.is_set() or not self._owns(partition):
                        return False
                    delay = backoff_delay_s(attempt, base_s=_RETRY_BASE_S, cap_s=_RETRY_CAP_S)
                    if exc.retry_after_s is not None:
                        delay = max(delay, min(exc.retry_after_s, _RETRY_CAP_S))
                    attempt += 1
                    log.warning(
                        "retrying record %s-%d@%d in %.2fs: %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        delay,
                        exc,
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._stopping.wait()
        self._metrics.processing_duration.observe(
            {"role": self.role}, time.perf_counter() - started
        )
        return True

    def _finish(self, partition: _Partition, record: ConsumedRecord) -> None:
        if self._owns(partition):
            partition.finish(record.offset)
        self._finished_total += 1
        self._release(1)

    def _release(self, count: int) -> None:
        # The in-flight gauge is refreshed per fetched batch and per commit interval, not here:
        # per record it cost more than the bookkeeping it reports.
        self._in_flight -= count
        self._capacity.set()
        if self._in_flight == 0 and self._held == 0:
            self._idle.set()

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
                await self._commit_finished()
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
            highwater = consumer.highwater(tp)
            done = (
                partition.commit_position
                if partition.commit_position is not None
                else partition.committed
            )
            if highwater is not None and done is not None:
                self._metrics.consumer_lag.set(_lag_labels(tp), max(0, highwater - done))

    async def _commit_finished(self, only: Sequence[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        wanted = (
            dict(self._partitions)  # a copy: a revocation during the commit must not change it
            if only is None
            else {tp: self._partitions[tp] for tp in only if tp in self._partitions}
        )
        offsets = {tp: pos for tp, p in wanted.items() if (pos := p.uncommitted()) is not None}
        if not offsets:
            return
        await consumer.commit(offsets)
        for tp, pos in offsets.items():
            wanted[tp].committed = pos
        self._last_commit = time.monotonic()

    # -- rebalancing (called by the listener) -----------------------------------------------

    async def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        try:
            await self._commit_finished(only=revoked)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("commit on revocation failed; the new owner redoes that work: %r", exc)
        for tp in revoked:
            self._partitions.pop(tp, None)
            forget(self._metrics.consumer_lag, _lag_labels(tp))  # the new owner reports it
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

    def _hold(self, scope: _Scope) -> None:
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

    def _unhold(self, scope: _Scope) -> None:
        hold = self._holds[scope]
        hold.depth -= 1
        if hold.depth:
            return
        del self._holds[scope]
        self._held -= hold.count
        self._in_flight += hold.count

    def _count_queued(self, scope: _Scope) -> None:
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


_key_worker: contextvars.ContextVar[tuple[ConsumerEngine, _Scope] | None] = contextvars.ContextVar(
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


def _lag_labels(tp: TopicPartition) -> dict[str, str]:
    return {"topic": tp.topic, "partition": str(tp.partition)}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: ConsumerEngine) -> None:
        self._engine = engine

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._engine._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._engine._on_assigned(assigned)
