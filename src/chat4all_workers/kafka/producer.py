"""The process's one Kafka producer: idempotent, acks=all, behind the circuit breaker.

Every record any role produces goes through `send_each` (or `send`/`send_many`, which raise the
first failure), which adds trace context headers and waits for Kafka's verdict on each record.

One owner of a record's fate: the producer. The idempotent client retries a batch in place until
the broker answers, so a caller that gave up on a record and sent it again would see both copies
arrive, the first one before events that followed it. A record handed to the client is
therefore never abandoned by the caller nor sent a second time by it; a send ends only with:
- a Delivery (acknowledged; a DuplicateSequence answer counts, the broker has the record);
- PermanentError: the broker refused the record for good (too large, unauthorized...), or the
  client refused it before sending it; nothing was written;
- RetryableError: the record was never handed to Kafka (the call's `breaker.ack_timeout_s` ran
  out while the client was still taking it, e.g. its batch queue was full during an outage; or
  an earlier record of the call met that fate: `NotSentError`, so a later record never overtakes
  it). Nothing was written;
- cancellation (the shutdown deadline): what was handed over may still reach Kafka; the caller's
  work is redone after the restart (at least once).
The client's own expiry of a batch whose partition has no leader is switched off: it fires also
for a batch that was sent before (written, its answer lost) and would leave a gap in the
sequence numbers, breaking the partition for the producer; the wait ends when Kafka answers.

The breaker counts records, not calls: each record without an acknowledgement `ack_timeout_s`
after its call began is one failure (the call goes on waiting), so an outage opens the breaker
within about `ack_timeout_s` once `failure_threshold` records wait, however few calls carry
them. While it is open a call is refused before anything is handed over (CircuitOpenError), so
no outbox attempt is spent on an outage.
A caller that must not wait for Kafka opts in with `fallback=True`: a record is parked in the
Redis fallback list instead ONLY when it was never handed to Kafka (breaker open at the call, or
not taken in time), so a parked record never also reaches Kafka from here. One already handed
over waits for its verdict like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, KafkaError, ProducerClosed
from aiokafka.structs import RecordMetadata
from opentelemetry import context as otel_context

from chat4all_workers.config import BreakerSettings, KafkaSettings
from chat4all_workers.deadline import timeout_at
from chat4all_workers.errors import CircuitOpenError, PermanentError, RetryableError
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.breaker import BreakerState, CircuitBreaker
from chat4all_workers.kafka.outgoing import OutgoingRecord, fallback_envelope
from chat4all_workers.kafka.partitioning import KeyPartitioner
from chat4all_workers.observability.tracing import (
    headers_with_trace,
)

log = logging.getLogger(__name__)


@frozen
class Delivery:
    """Where the record went: Kafka (topic/partition/offset) or the fallback list (offset None)."""

    topic: str
    partition: int | None
    offset: int | None

    @property
    def parked(self) -> bool:
        return self.offset is None


class NotSentError(RetryableError):
    """Never handed to Kafka: an earlier record of the same call could not be, and a later record
    must not overtake it. Nobody's fault: send it again."""


SendOutcome = Delivery | RetryableError | PermanentError
FallbackSink = Callable[[bytes], Awaitable[None]]


class Producer:
    def __init__(
        self,
        kafka: KafkaSettings,
        breaker_settings: BreakerSettings,
        *,
        on_breaker_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._settings = kafka
        self._ack_timeout_s = breaker_settings.ack_timeout_s
        self._deadlines = _Deadlines(self._ack_deadline)
        self.breaker = CircuitBreaker(
            "kafka",
            failure_threshold=breaker_settings.failure_threshold,
            cooldown_s=breaker_settings.cooldown_s,
            on_change=on_breaker_change,
        )
        self.fallback_sink: FallbackSink | None = None
        self._client = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=kafka.linger_ms,
            max_batch_size=kafka.max_batch_bytes,
            request_timeout_ms=kafka.request_timeout_ms,
            partitioner=KeyPartitioner(),
        )
        _never_expire_batches(self._client)
        self._unacknowledged = 0  # records handed to the client, without a verdict yet

    async def start(self) -> None:
        await self._client.start()

    async def stop(self, *, until: float = math.inf) -> None:
        """Flush and close the client by `until` (event-loop time). It runs after the roles
        ended, so a record still unacknowledged then belongs to a caller that gave up
        (cancelled at the shutdown deadline) and whose work is redone after a restart; past
        `until` such records are dropped and the connections closed regardless."""
        try:
            async with timeout_at(until):
                await self._client.stop()
        except TimeoutError:
            log.warning(
                "kafka producer: %d records still unacknowledged at the shutdown deadline; "
                "dropping them (their work is redone after the restart)",
                self._unacknowledged,
            )
            await _force_close(self._client)

    @property
    def unacknowledged(self) -> int:
        return self._unacknowledged

    async def send(self, record: OutgoingRecord, *, fallback: bool = False) -> Delivery:
        """Produce one record and wait for Kafka's verdict; raise it if it is an error."""
        (outcome,) = await self.send_each([record], fallback=fallback)
        if not isinstance(outcome, Delivery):
            raise outcome
        return outcome

    async def send_many(
        self, records: Sequence[OutgoingRecord], *, fallback: bool = False
    ) -> list[Delivery]:
        """`send_each`, raising the first failure (in record order) once every verdict is in."""
        deliveries = []
        for outcome in await self.send_each(records, fallback=fallback):
            if not isinstance(outcome, Delivery):
                raise outcome
            deliveries.append(outcome)
        return deliveries

    async def send_each(
        self, records: Sequence[OutgoingRecord], *, fallback: bool = False
    ) -> list[SendOutcome]:
        """Produce records in order; one outcome per record, once Kafka has decided each.

        Records to one partition keep their order (one batch in flight per broker, retried in
        place). CircuitOpenError when the breaker refuses the call, unless `fallback`: then
        every record is parked. With `fallback`, a record never handed over is parked too.
        """
        if not records:
            return []
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            if fallback and self.fallback_sink is not None:
                return list(await self._park(records))
            raise
        try:
            outcomes = await self._deliver(records)
        except BaseException:
            self.breaker.record_abandoned()  # cancelled mid-call: free the half-open probe slot
            raise
        if fallback and self.fallback_sink is not None:
            unsent = [i for i, o in enumerate(outcomes) if isinstance(o, RetryableError)]
            if unsent:
                parked = await self._park([records[i] for i in unsent])
                for i, delivery in zip(unsent, parked, strict=True):
                    outcomes[i] = delivery
        return outcomes

    async def _deliver(self, records: Sequence[OutgoingRecord]) -> list[SendOutcome]:
        # A deadline per call (at `ack_timeout_s` it counts what is unacknowledged, and cuts
        # short an append still waiting for room in the client), kept by one timer per 50 ms
        # of deadlines shared by every call that falls in it: a timer per call was 2 % of the
        # router's CPU.
        task = asyncio.current_task()
        assert task is not None
        call = _Call(len(records), task=task)
        self._deadlines.add(call, after_s=self._ack_timeout_s)
        refused: RetryableError | PermanentError | None = None
        try:
            try:
                for record in records:
                    call.futures.append(await self._append(record))
            except asyncio.CancelledError:
                if not call.cut_short or task.uncancel() > 0:
                    raise  # not (only) our own deadline: the caller is cancelled
                refused = RetryableError("kafka did not take the record in time")
            except KafkaError as exc:
                refused = _verdict(exc, when="handing the record to the client")
            call.appending = False
            for future in call.futures:
                if not future.done():
                    await _settled(future)  # never abandoned: the client's verdict is final
        finally:
            call.over = True
            self._hand_back(call.futures)
        outcomes: list[SendOutcome] = [_outcome(f) for f in call.futures]
        answered = len(outcomes) > 0
        if refused is not None:
            answered = answered or isinstance(refused, PermanentError)
            outcomes.append(refused)
            outcomes += [
                NotSentError("not sent: an earlier record of the call was not taken")
                for _ in range(len(records) - len(outcomes))
            ]
        if answered and not all(isinstance(o, RetryableError) for o in outcomes):
            self.breaker.record_success()  # Kafka answered (late or not, the record's fault or not)
        return outcomes

    def _ack_deadline(self, call: _Call) -> None:
        if call.over:
            return
        if call.appending:
            call.cut_short = True
            call.task.cancel()
        missed = call.total - sum(1 for f in call.futures if f.done())
        if missed:
            self.breaker.record_failure(count=missed)
            # Said even when too few to open the breaker: a call that waits on a handful of
            # records is otherwise silent for as long as Kafka takes (a backfill drain, an
            # outbox batch). Repeats are limited per interval like every warning.
            log.warning(
                "kafka: %d record(s) unacknowledged %gs after the send began "
                "(breaker.ack_timeout_s); waiting for Kafka's verdict",
                missed, self._ack_timeout_s,
            )  # fmt: skip

    async def _append(self, record: OutgoingRecord) -> asyncio.Future[RecordMetadata]:
        if record.traced:
            future: asyncio.Future[RecordMetadata] = await self._client.send(
                record.topic, record.value, key=record.key, headers=record.headers
            )
        else:
            token = None if record.context is None else otel_context.attach(record.context)
            try:
                future = await self._client.send(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=headers_with_trace(record.headers),
                )
            finally:
                if token is not None:
                    otel_context.detach(token)
        self._unacknowledged += 1
        return future

    def _hand_back(self, futures: Sequence[asyncio.Future[RecordMetadata]]) -> None:
        """A call is over: its records with a verdict are no longer unacknowledged (their
        errors read, or asyncio would log them), and those without one (the caller cancelled)
        stop counting when theirs comes. Counted here rather than by a done callback on every
        record: a callback is an event-loop turn per record."""
        answered = 0
        for future in futures:
            if not future.done():
                future.add_done_callback(self._acknowledged)
                continue
            answered += 1
            if not future.cancelled():
                future.exception()
        self._unacknowledged -= answered

    def _acknowledged(self, future: asyncio.Future[RecordMetadata]) -> None:
        self._unacknowledged -= 1
        if not future.cancelled():
            future.exception()  # retrieved here; `_outcome` reads it, asyncio must not log it

    async def probe(self) -> bool:
        """True when the cluster answers a metadata request (used by /readyz)."""
        try:
            async with asyncio.timeout(5):
                await self._client.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    async def park(self, records: Sequence[OutgoingRecord]) -> list[Delivery]:
        """Park records that were never handed to Kafka in the fallback list, as a `fallback`
        send does with them (a caller that sent them through another path: kafka/coalescing.py).
        Needs `fallback_sink`."""
        return await self._park(records)

    async def _park(self, records: Sequence[OutgoingRecord]) -> list[Delivery]:
        assert self.fallback_sink is not None
        for r in records:
            await self.fallback_sink(fallback_envelope(r))
        return [Delivery(r.topic, None, None) for r in records]


@dataclass(slots=True)
class _Call:
    """One `send_each` call, as its acknowledgement deadline sees it."""

    total: int
    task: asyncio.Task[object]
    futures: list[asyncio.Future[RecordMetadata]] = field(default_factory=list)
    appending: bool = True
    cut_short: bool = False
    over: bool = False  # the call returned: its deadline no longer matters


class _Deadlines:
    """Calls' deadlines in 50 ms buckets, one timer per bucket: each bucket's calls are looked
    at once, when it falls due (a call that returned before is skipped)."""

    _GRAIN_S = 0.05

    def __init__(self, expire: Callable[[_Call], None]) -> None:
        self._expire = expire
        self._buckets: dict[int, list[_Call]] = {}

    def add(self, call: _Call, *, after_s: float) -> None:
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + after_s) / self._GRAIN_S)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = []
            loop.call_at(slot * self._GRAIN_S, self._due, slot)
        bucket.append(call)

    def _due(self, slot: int) -> None:
        for call in self._buckets.pop(slot, ()):
            if not call.over:
                self._expire(call)


async def _settled(future: asyncio.Future[RecordMetadata]) -> None:
    """Until `future` is done, whatever its outcome (`_outcome` reads it); the caller's own
    cancellation propagates (it also cancels `future`, which the client then ignores)."""
    try:
        await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:  # noqa: BLE001 - the record's verdict, read by `_outcome`
        return


def _outcome(future: asyncio.Future[RecordMetadata]) -> SendOutcome:
    if future.cancelled():
        return RetryableError("kafka: the client dropped the record")
    exc = future.exception()
    if exc is None:
        meta = future.result()
        return Delivery(meta.topic, meta.partition, meta.offset)
    return _verdict(exc, when="delivering the record")


def _verdict(exc: BaseException, *, when: str) -> RetryableError | PermanentError:
    """A broker's non-retriable answer is the record's fault; anything else is not."""
    if isinstance(exc, BrokerResponseError) and not exc.retriable:
        error: RetryableError | PermanentError = PermanentError(
            f"kafka refused the record: {exc!r}"
        )
    elif isinstance(exc, TimeoutError):
        error = RetryableError(f"kafka did not take the record in time ({when})")
    else:
        error = RetryableError(f"kafka failed {when}: {exc!r}")
    error.__cause__ = exc
    return error


# aiokafka 0.12-0.14 keep the batch expiry and the queued batches in the accumulator; these
# functions reach in, and the producer refuses to start if a new version moved them (rather
# than silently expire batches again).
def _accumulator(client: AIOKafkaProducer) -> Any:
    accumulator = getattr(client, "_message_accumulator", None)
    if accumulator is None or not all(
        hasattr(accumulator, name)
        for name in ("_batch_ttl", "_batches", "_pending_batches", "fail_all")
    ):
        raise RuntimeError(
            "this aiokafka version keeps no batch expiry to switch off (see kafka/producer.py)"
        )
    return accumulator


def _never_expire_batches(client: AIOKafkaProducer) -> None:
    _accumulator(client)._batch_ttl = math.inf


async def _force_close(client: AIOKafkaProducer, *, grace_s: float = 0.1) -> None:
    """The client's own `stop()` waits for every batch, for ever while Kafka is away. Past the
    deadline: stop its sender, fail the batches it still holds, close its connections."""
    sender = getattr(client, "_sender", None)
    task = None if sender is None else sender.sender_task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=grace_s)
    accumulator: Any = _accumulator(client)
    # A batch queued again for a retry left the in-flight set, which its done-callback removes
    # it from: put it back first, or that callback raises once the batch fails.
    for batches in accumulator._batches.values():
        for batch in batches:
            if batch.retry_count:
                accumulator._pending_batches.add(batch)
    accumulator.fail_all(ProducerClosed())
    with contextlib.suppress(KafkaError, OSError):
        await client.client.close()
