"""The backfill worker: moves what was parked in the Redis fallback list back into Kafka.

Crash safety without losing an item: a batch is taken with LMOVE (queue head -> this worker's
processing list `{queue}:processing:{worker_id}`, one atomic step per item, oldest first since
writers RPUSH) and the processing list is deleted only after Kafka acknowledged every record. A
worker that dies in between (even `kill -9`) leaves its items in its processing list; its
heartbeat key `{queue}:heartbeat:{worker_id}` (TTL `fallback.heartbeat_ttl_s`) then expires, and
any backfill worker puts those items back at the head of the queue, in order, on start and
periodically. Delivery is therefore at least once: consumers deduplicate (SPEC section 5).

Membership (`{queue}:workers`) is repaired by every heartbeat: a beat sets the heartbeat key and
re-adds the worker in one MULTI, and recovering a dead worker (checking its heartbeat, removing
it, handing its items back) is one Lua script, so the two never interleave. A worker paused past
its TTL (a long GC pause, a Redis outage) is recovered once, re-registers on its next beat, and
is found again if it dies later.

Each item is sent in a span of its own that continues the trace the item was parked with (its
`traceparent` header), else starts one. While Kafka is away a batch waits for Kafka's verdict
like every send (kafka/producer.py), held in this worker's processing list and heart-beaten;
items Kafka refuses for good go to the dead list, items never handed to Kafka go back to the
head of the queue, in order.

An item is a bare `message_processing` value (topic `topics.message_processing`, key
`conversation:{conversation_id}`, sent byte for byte) or an envelope `{topic, key, value,
headers}`. Anything else goes to `{queue}:dead` as `{"reason": ..., "item": <original text>}`:
never silently dropped.

It sends while the breaker lets calls through: not while it is open; when half-open it sends one
item, which is the probe that closes the breaker (a backfill-only process has no other traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from chat4all_workers.config_checks import is_topic_name
from chat4all_workers.deadline import timeout_at
from chat4all_workers.errors import (
    CircuitOpenError,
    InvalidRecordError,
    PermanentError,
    RetryableError,
)
from chat4all_workers.formats.wire import Fields, describe, present, quote, read_record
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.breaker import BreakerState
from chat4all_workers.kafka.outgoing import OutgoingRecord, span_per_record
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.observability.metrics import total
from chat4all_workers.resources import Need
from chat4all_workers.role import RoleContext, RoleReport, RoleSpec, outlast_outages
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


# A conversation id as older API versions wrote it: a decimal string within bigint's digits.
_DECIMAL = re.compile(r"-?[0-9]{1,18}", re.ASCII)

# Recover one worker if, and only if, its heartbeat is gone: atomic, so a beat that re-registers
# it cannot fall between the check and the removal. Newest item first to the queue head, so the
# queue keeps the original order. -1 when the worker is alive.
# KEYS: heartbeat, workers, processing, queue; ARGV: worker id.
_RECOVER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('SREM', KEYS[2], ARGV[1])
local moved = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'RIGHT', 'LEFT') do moved = moved + 1 end
return moved
"""


class InvalidItemError(ValueError):
    """The item is neither form of SPEC section 5."""


@frozen
class _Keys:
    queue: str
    processing: str
    heartbeat: str
    workers: str
    dead: str

    @classmethod
    def for_worker(cls, queue: str, worker_id: str) -> _Keys:
        return cls(
            queue=queue,
            processing=f"{queue}:processing:{worker_id}",
            heartbeat=f"{queue}:heartbeat:{worker_id}",
            workers=f"{queue}:workers",
            dead=f"{queue}:dead",
        )


def parse_item(raw: bytes, *, message_processing_topic: str) -> OutgoingRecord:
    """The record an item stands for; InvalidItemError says why there is none, naming the
    field. A bare value needs a `message_id` and a `conversation_id` (a bigint, or one written
    as a decimal string by older API versions) for its key; the router checks the rest."""
    try:
        fields = read_record(raw)
    except InvalidRecordError as exc:
        raise InvalidItemError(str(exc)) from None
    if "topic" in fields.doc and "value" in fields.doc:
        return _from_envelope(fields)
    if "message_id" not in fields.doc:
        fields.problems.append("neither an envelope (topic, value) nor a bare value (message_id)")
        _done(fields)
    conversation_id = fields.doc.get("conversation_id")
    if isinstance(conversation_id, str) and _DECIMAL.fullmatch(conversation_id):
        key = conversation_id
    else:
        key = str(fields.integer("conversation_id"))
    _done(fields)
    return OutgoingRecord(message_processing_topic, raw, f"conversation:{key}".encode())


def _from_envelope(fields: Fields) -> OutgoingRecord:
    topic = fields.text("topic")
    if topic is not None and not is_topic_name(topic):
        # The client would wait for metadata of a topic that cannot exist until the send times
        # out, as if Kafka were down: the item would go round forever and open the breaker.
        fields.problem("topic", f"{quote(topic)} is not a topic one may produce to")
    key = fields.text("key", required=False, allow_empty=True)
    headers = fields.object("headers", required=False)
    header_values = dict(headers.doc) if headers is not None else {}
    for name, text in header_values.items():
        if headers is not None and not isinstance(text, str):
            headers.problem(name, f"must be a string, got {describe(text)}")
    _done(fields)
    value = fields.doc["value"]
    # A value that was not JSON was parked as text (see kafka/outgoing.py, fallback_envelope).
    body = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return OutgoingRecord(
        present(topic),
        body,
        None if key is None else key.encode(),
        [(k, _header_bytes(v)) for k, v in header_values.items()],
    )


def _done(fields: Fields) -> None:
    try:
        fields.done()
    except InvalidRecordError as exc:
        raise InvalidItemError(str(exc)) from None


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")  # how the producer parked raw header bytes
    except UnicodeEncodeError:
        return value.encode("utf-8")


class _Backfill:
    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.fallback
        self.redis: aioredis.Redis = ctx.resources.redis_client()
        self.producer: Producer = ctx.resources.kafka()
        worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        queue = ctx.resources.redis_key(self.settings.queue_key)
        self.keys = _Keys.for_worker(queue, worker_id)
        self.worker_id = worker_id
        self._ttl_ms = max(1000, int(self.settings.heartbeat_ttl_s * 1000))
        self._recover = self.redis.register_script(_RECOVER)
        self.queue_length_seen: int | None = None  # the queue's length at the last look

    def report(self) -> RoleReport:
        """Items moved into Kafka so far (`messages_processed_total`), the queue's length."""
        moved = total(self.ctx.metrics.messages_processed, role=self.ctx.name)
        return RoleReport(processed_total=moved, state={"queue_length": self.queue_length_seen})

    async def beat(self) -> None:
        """Alive, and a member: re-registers a worker that was presumed dead and recovered."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat, b"1", px=self._ttl_ms)
            pipe.sadd(self.keys.workers, self.worker_id)
            await pipe.execute()

    async def register(self) -> None:
        await self.beat()

    async def heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_ttl_s / 3)
            await self.beat()

    async def recover_orphans(self) -> int:
        """Put the items of workers whose heartbeat expired back at the head of the queue."""
        recovered = 0
        for member in await self.redis.smembers(self.keys.workers):
            worker_id = member.decode() if isinstance(member, bytes) else str(member)
            other = _Keys.for_worker(self.keys.queue, worker_id)
            if worker_id == self.worker_id:
                continue
            keys = [other.heartbeat, other.workers, other.processing, other.queue]
            moved = int(await self._recover(keys=keys, args=[worker_id]))
            if moved < 0:
                continue
            if moved:
                log.warning("recovered %d fallback items of dead worker %s", moved, worker_id)
            recovered += moved
        return recovered

    async def _hand_back(self, processing: str) -> int:
        """Newest first to the queue head, so the queue keeps the original order."""
        moved = 0
        while await self.redis.lmove(processing, self.keys.queue, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved

    async def hand_back_own(self) -> int:
        return await self._hand_back(self.keys.processing)

    async def unregister(self) -> None:
        await self.redis.delete(self.keys.heartbeat)
        await self.redis.srem(self.keys.workers, self.worker_id)

    async def move_once(self) -> int:
        """Take up to a batch, send it, settle each item by its verdict; returns items settled."""
        state = self.producer.breaker.state
        if state is BreakerState.OPEN:
            return 0
        size = 1 if state is BreakerState.HALF_OPEN else self.settings.batch_size
        async with self.redis.pipeline(transaction=False) as pipe:
            for _ in range(size):
                pipe.lmove(self.keys.queue, self.keys.processing, "LEFT", "RIGHT")
            taken: list[bytes] = [item for item in await pipe.execute() if item is not None]
        if not taken:
            return 0
        topic = self.ctx.settings.topics.message_processing
        good: list[tuple[bytes, OutgoingRecord]] = []
        dead: list[tuple[bytes, str, str]] = []  # item, reason, dlq_messages_total reason
        for raw in taken:
            try:
                good.append((raw, parse_item(raw, message_processing_topic=topic)))
            except InvalidItemError as exc:
                dead.append((raw, str(exc), "invalid_item"))
        try:
            with span_per_record("backfill publish", [record for _, record in good]) as records:
                outcomes = await self.producer.send_each(records)
        except CircuitOpenError as exc:  # opened since the check above: try again later
            log.info("fallback items go back to the queue: %s", exc)
            outcomes = [exc] * len(good)
        back: list[bytes] = []
        delivered = 0
        for (raw, _), outcome in zip(good, outcomes, strict=True):
            if isinstance(outcome, RetryableError):
                back.append(raw)
            elif isinstance(outcome, PermanentError):
                dead.append((raw, str(outcome), "kafka_refused"))
            else:
                delivered += 1
        await self._settle(dead, back)
        if delivered:
            self.ctx.metrics.messages_processed.add(
                {"role": self.ctx.name, "channel": "", "outcome": "backfilled"}, delivered
            )
        return len(taken) - len(back)

    async def _settle(self, dead: Sequence[tuple[bytes, str, str]], back: Sequence[bytes]) -> None:
        """In one MULTI: the unusable to the dead list with their reasons, those never handed to
        Kafka back to the queue head in their order, and the processing list forgotten."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for raw, reason, _ in dead:
                log.warning("fallback item moved to %s: %s", self.keys.dead, reason)
                wrapper = {"reason": reason, "item": raw.decode("utf-8", errors="replace")}
                pipe.rpush(self.keys.dead, orjson.dumps(wrapper))
            if back:
                pipe.lpush(self.keys.queue, *reversed(back))
            pipe.delete(self.keys.processing)
            await pipe.execute()
        for _, _, label in dead:
            self.ctx.metrics.dlq_messages.inc({"source": "backfill", "reason": label})

    async def queue_length(self) -> int:
        length = int(await self.redis.llen(self.keys.queue))
        self.ctx.metrics.fallback_queue_length.set({}, length)
        self.queue_length_seen = length
        return length


async def run(ctx: RoleContext) -> None:
    worker = _Backfill(ctx)
    ctx.report(worker.report)
    # Through a Redis restart (AOF keeps the lists) the items stay where they were: in the
    # queue, or in our processing list, handed back or recovered when Redis answers again.
    await outlast_outages(ctx, lambda: _serve(ctx, worker), what="moving fallback items")


async def _serve(ctx: RoleContext, worker: _Backfill) -> None:
    await worker.register()
    try:
        async with asyncio.TaskGroup() as tasks:
            beating = tasks.create_task(worker.heartbeat_forever())
            await worker.recover_orphans()
            ctx.mark_ready()
            await _loop(ctx, worker)
            beating.cancel()
    finally:
        # Whatever we hold goes back before we go (a kill -9 leaves it to the heartbeat), by the
        # shutdown deadline.
        with contextlib.suppress(OSError, redis_errors.RedisError, TimeoutError):
            async with timeout_at(ctx.shutdown.cleanup_end()):
                await worker.hand_back_own()
                await worker.unregister()


async def _loop(ctx: RoleContext, worker: _Backfill) -> None:
    interval_s = ctx.settings.fallback.poll_interval_s
    loop = asyncio.get_running_loop()
    next_recovery = loop.time() + ctx.settings.fallback.heartbeat_ttl_s
    while not ctx.stopping.is_set():
        moved = await worker.move_once()
        length = await worker.queue_length()
        if loop.time() >= next_recovery:
            await worker.recover_orphans()
            next_recovery = loop.time() + ctx.settings.fallback.heartbeat_ttl_s
        if moved and length:
            continue
        if ctx.drain and length == 0:
            return
        await wait_event(ctx.stopping, timeout_s=interval_s)


ROLE = RoleSpec(
    name="backfill",
    needs=frozenset({Need.REDIS, Need.KAFKA}),
    run=run,
)
