"""The outbox poller: publishes `outbox_events` rows to Kafka, in order per aggregate, once.

A batch is claimed, published and marked in ONE transaction: the rows stay locked while Kafka
acknowledges them, and they are marked published only after Kafka's verdict on every record
(kafka/producer.py: a record handed to Kafka is never abandoned, so it is never sent twice and
never overtaken by a later event of its aggregate). Through a Kafka outage that means the
transaction simply stays open, its rows locked, until Kafka answers (or the shutdown deadline
cancels the wait: the transaction rolls back and the rows wait for the next poller). A crash
before the commit leaves the rows unpublished for the next poller (at least once); in the normal
case, and through any outage, no event is published twice, however many pollers run (see
db/outbox.py for the claim).

What happens to a claimed event:
- acknowledged: marked published; a `message.*` event with a `conversation_id` is also announced
  on the Redis channel `conversation:{id}` after the commit (best effort, like all pub/sub);
- never handed to Kafka (not taken in time, or behind one that was not): `attempts` + 1,
  `last_error`, and `next_attempt_at` = now + base * 2**attempts, later events of the same
  aggregate waiting behind it; but NOT when the breaker is open after the call, nor for one only
  held back behind another (an outage, or nobody's fault: no attempt is burned);
- claimed again with `attempts` past `outbox.max_retries`: dead-lettered (source `outbox`, the
  intended topic as `dlq.original_topic`) and marked published with `last_error` kept;
- Kafka refused it for good (PermanentError): dead-lettered at once;
- breaker open when the batch is sent (CircuitOpenError): the transaction rolls back, no attempt
  is burned, the poller waits.

Each event is published in a span of its own, whose context its record's `traceparent` carries.
Woken by LISTEN/NOTIFY on `outbox.notify_channel` (one pooled connection is held for it) and by a
poll every `outbox.poll_interval_ms`; a full batch is followed at once by the next one.
PostgreSQL's `idle_in_transaction_session_timeout`, if set, must exceed the longest Kafka outage
to be waited out: a transaction it kills loses the marks of records Kafka then acknowledges, and
those are published again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import asyncpg
import orjson
import redis.exceptions as redis_errors

from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.config import NON_EMPTY, TOPIC, Settings, env
from chat4all_workers.db import outbox as db
from chat4all_workers.deadline import timeout_at
from chat4all_workers.errors import CircuitOpenError, PermanentError, RetryableError
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.outgoing import OutgoingRecord, span_per_record
from chat4all_workers.kafka.producer import Delivery, NotSentError
from chat4all_workers.observability.metrics import total
from chat4all_workers.resources import TRANSIENT_ERRORS, Need
from chat4all_workers.role import RoleContext, RoleReport, RoleSpec, outlast_outages
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class OutboxSettings:
    """`[outbox]`: how the outbox polls, retries and routes."""

    SECTION: ClassVar[str] = "outbox"

    poll_interval_ms: int = field(default=500, metadata=env("OUTBOX_POLL_INTERVAL_MS"))
    max_retries: int = field(default=3, metadata=env("OUTBOX_MAX_RETRIES", min=0))
    batch_size: int = field(default=100, metadata=env("OUTBOX_BATCH_SIZE"))
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    notify_channel: str = field(default="outbox_events", metadata=NON_EMPTY)
    routes: dict[str, str] = field(default_factory=dict, metadata=TOPIC)
    pending_refresh_s: float = 5.0


def route(settings: Settings, event_type: str, row_topic: str | None) -> str:
    """The topic of an event: the row's own, else `outbox.routes` (exact, then glob), else the
    SPEC's table."""
    if row_topic:
        return row_topic
    routes = settings.section(OutboxSettings).routes
    if event_type in routes:
        return routes[event_type]
    for pattern, topic in routes.items():
        if fnmatch.fnmatchcase(event_type, pattern):
            return topic
    topics = settings.topics
    if event_type == "message.created":
        return topics.message_processing
    if event_type.startswith("message."):
        return topics.message_events
    if event_type.startswith("file."):
        return topics.file_events
    if event_type.startswith("conversation."):
        return topics.conversation_events
    return topics.default_events


@dataclass
class _Prepared:
    event: db.OutboxEvent
    topic: str
    record: OutgoingRecord
    payload: Any


def _prepare(settings: Settings, event: db.OutboxEvent) -> _Prepared:
    """The record of an event: its payload as PostgreSQL prints the jsonb, unchanged (parsing
    and re-encoding it would turn an integer beyond 64 bits into a rounded float). The parsed
    payload only finds the key and the announcement; one orjson cannot read at all (a number
    beyond a double's range) is still published, for its consumer to take or dead-letter with
    the reason, instead of crashing the poller at every claim."""
    value = event.payload.encode()
    try:
        payload: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        payload = None
    conversation_id = payload.get("conversation_id") if isinstance(payload, dict) else None
    if isinstance(conversation_id, int | str) and not isinstance(conversation_id, bool):
        key = f"conversation:{conversation_id}"
    else:  # none, or not an id (an object, a list): the aggregate keeps its events in order
        key = event.aggregate_id
    topic = route(settings, event.event_type, event.topic)
    headers = [
        ("event_id", str(event.id).encode()),
        ("event_type", event.event_type.encode()),
        ("aggregate_type", event.aggregate_type.encode()),
        ("aggregate_id", event.aggregate_id.encode()),
    ]
    record = OutgoingRecord(topic, value, key.encode(), headers)
    return _Prepared(event, topic, record, payload)


@dataclass
class _Outcome:
    published: list[_Prepared] = field(default_factory=list)
    dead: list[uuid.UUID] = field(default_factory=list)
    failed: list[db.Failure] = field(default_factory=list)


class _Poller:
    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.section(OutboxSettings)
        self.pool: asyncpg.Pool = ctx.resources.postgres()
        self.producer = ctx.resources.kafka()
        self._pending_at = -float("inf")
        self.pending: int | None = None  # unpublished rows at the last count

    def report(self) -> RoleReport:
        """Events settled (published, dead-lettered, failed an attempt) and published so far,
        from `messages_processed_total`; the backlog at its last count."""
        processed = self.ctx.metrics.messages_processed
        return RoleReport(
            processed_total=total(processed, role=self.ctx.name),
            counts={"published": total(processed, role=self.ctx.name, outcome="published")},
            state={"pending": self.pending},
        )

    async def publish_once(self) -> int:
        """Claim, publish and mark one batch; returns how many events it claimed."""
        async with self.pool.acquire() as conn, conn.transaction():
            events = await db.claim(conn, limit=self.settings.batch_size)
            if not events:
                return 0
            outcome = await self._deliver(events)
            await db.mark_published(conn, [p.event.id for p in outcome.published] + outcome.dead)
            await db.mark_failed(conn, outcome.failed)
        await self._announce(outcome.published)
        for label, count in (
            ("published", len(outcome.published)),
            ("dead_lettered", len(outcome.dead)),
            ("failed", len(outcome.failed)),
        ):
            if count:
                self.ctx.metrics.messages_processed.add(
                    {"role": self.ctx.name, "channel": "", "outcome": label}, count
                )
        return len(events)

    async def _deliver(self, events: Sequence[db.OutboxEvent]) -> _Outcome:
        outcome = _Outcome()
        blocked: set[tuple[str, str]] = set()
        to_send: list[_Prepared] = []
        for event in events:
            if event.aggregate in blocked:
                continue
            prepared = _prepare(self.ctx.settings, event)
            if event.attempts > self.settings.max_retries:
                if await self._dead_letter(prepared, event.last_error or "retries exhausted"):
                    outcome.dead.append(event.id)
                else:
                    blocked.add(event.aggregate)
                continue
            to_send.append(prepared)
        with span_per_record("outbox publish", [p.record for p in to_send]) as records:
            try:
                results = await self.producer.send_each(records)
            except CircuitOpenError:
                if not outcome.dead:
                    raise
                return outcome  # keep the dead-letters' marks; the rest waits for Kafka
        # An open breaker after the call means an outage: what was not sent waits, unmarked.
        outage = not self.producer.breaker.is_closed
        for prepared, result in zip(to_send, results, strict=True):
            event = prepared.event
            if isinstance(result, Delivery):
                outcome.published.append(prepared)
            elif isinstance(result, PermanentError):
                if await self._dead_letter(prepared, str(result)):
                    outcome.dead.append(event.id)
                else:
                    outcome.failed.append(self._failure(event, result))
            elif not outage and not isinstance(result, NotSentError):
                outcome.failed.append(self._failure(event, result))
        return outcome

    def _failure(self, event: db.OutboxEvent, exc: Exception) -> db.Failure:
        delay = backoff_delay_s(
            event.attempts,
            base_s=self.settings.backoff_base_s,
            cap_s=self.settings.backoff_cap_s,
            jitter=False,
        )
        log.warning(
            "outbox event %s (%s) failed, attempt %d, retry in %.1fs: %s",
            event.id,
            event.event_type,
            event.attempts + 1,
            delay,
            exc,
        )
        return db.Failure(event.id, f"{type(exc).__name__}: {exc}"[:2000], delay)

    async def _dead_letter(self, prepared: _Prepared, reason: str) -> bool:
        """True when the DLQ acknowledged; False leaves the event for a later claim."""
        event = prepared.event
        error_type = (
            "retries_exhausted" if event.attempts > self.settings.max_retries else "kafka_refused"
        )
        try:
            await dead_letter(
                self.producer,
                dlq_topic=self.ctx.settings.topics.dlq,
                value=prepared.record.value,
                key=prepared.record.key,
                source="outbox",
                reason=reason,
                error_type=error_type,
                attempts=event.attempts,
                original_topic=prepared.topic,
                extra_headers=list(prepared.record.headers),
                metrics=self.ctx.metrics,
            )
        except CircuitOpenError:
            raise
        except (RetryableError, PermanentError) as exc:
            log.warning("could not dead-letter outbox event %s yet: %s", event.id, exc)
            return False
        log.error("outbox event %s dead-lettered: %s", event.id, reason)
        return True

    async def _announce(self, published: Sequence[_Prepared]) -> None:
        """Tell live clients about message events; pub/sub is best effort by nature."""
        notes = [
            (p.payload["conversation_id"], {"type": p.event.event_type, **p.payload})
            for p in published
            if p.event.event_type.startswith("message.")
            and isinstance(p.payload, dict)
            and p.payload.get("conversation_id") is not None
        ]
        if not notes:
            return
        resources = self.ctx.resources
        try:
            async with resources.redis_client().pipeline(transaction=False) as pipe:
                for conversation_id, note in notes:
                    channel = resources.redis_key(f"conversation:{conversation_id}")
                    pipe.publish(channel, orjson.dumps(note))
                await pipe.execute()
        except (redis_errors.RedisError, OSError) as exc:
            log.warning("could not announce %d outbox events on Redis: %s", len(notes), exc)

    async def refresh_pending(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._pending_at >= self.settings.pending_refresh_s:
            self._pending_at = now
            self.pending = await db.count_pending(self.pool)
            self.ctx.metrics.outbox_pending.set({}, self.pending)


async def run(ctx: RoleContext) -> None:
    poller = _Poller(ctx)
    ctx.report(poller.report)
    # A database outage rolls back the batch in flight (its rows stay unpublished) and takes
    # the LISTEN connection with it: serve again, with a new listener, once it is back.
    await outlast_outages(ctx, lambda: _serve(ctx, poller), what="the outbox poll")


async def _serve(ctx: RoleContext, poller: _Poller) -> None:
    wake = asyncio.Event()
    own = ctx.settings.section(OutboxSettings)
    channel = own.notify_channel
    interval_s = own.poll_interval_ms / 1000

    def on_notify(*_: object) -> None:
        wake.set()

    async with poller.pool.acquire() as listener, asyncio.TaskGroup() as tasks:
        await listener.add_listener(channel, on_notify)
        stop_waker = tasks.create_task(_wake_on(ctx.stopping, wake))
        # The backlog gauge stays current while a batch waits out a Kafka outage.
        counter = tasks.create_task(_count_pending_forever(poller))
        try:
            ctx.mark_ready()
            await _poll(ctx, poller, wake, interval_s)
        finally:
            stop_waker.cancel()
            counter.cancel()
            # Bounded by the shutdown deadline; a connection that died (database gone) has no
            # listener left to remove, and the gauge is then left as it was.
            with contextlib.suppress(
                asyncpg.InterfaceError, asyncpg.PostgresError, OSError, TimeoutError
            ):
                async with timeout_at(ctx.shutdown.cleanup_end()):
                    await listener.remove_listener(channel, on_notify)
                    await poller.refresh_pending(force=True)


async def _poll(ctx: RoleContext, poller: _Poller, wake: asyncio.Event, interval_s: float) -> None:
    waiting = False  # for an open breaker: said once, not at every poll
    while not ctx.stopping.is_set():
        wake.clear()
        try:
            claimed = await poller.publish_once()
            waiting = False
        except CircuitOpenError as exc:
            if not waiting:
                log.info("kafka circuit open; outbox events wait: %s", exc)
            waiting = True
            claimed = 0
        await poller.refresh_pending()
        if claimed:
            continue
        if ctx.drain and not await db.has_due(poller.pool):
            return
        await wait_event(wake, timeout_s=interval_s)


async def _count_pending_forever(poller: _Poller) -> None:
    while True:
        await asyncio.sleep(poller.settings.pending_refresh_s)
        with contextlib.suppress(*TRANSIENT_ERRORS):  # the poll reports database outages
            await poller.refresh_pending()


async def _wake_on(stopping: asyncio.Event, wake: asyncio.Event) -> None:
    await stopping.wait()
    wake.set()


ROLE = RoleSpec(
    name="outbox",
    needs=frozenset({Need.POSTGRES, Need.KAFKA, Need.REDIS}),
    run=run,
    settings=OutboxSettings,
)
