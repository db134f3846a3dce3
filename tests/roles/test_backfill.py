"""The backfill worker against real Redis and Kafka, including a SIGKILL and a Kafka outage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.kafka.breaker import BreakerState
from chat4all_workers.kafka.outgoing import OutgoingRecord
from harness.deployment import free_port, settings_for
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.roles.durable_support import KafkaProxy, wait_for_records
from tests.stack import KafkaTopicFactory

pytestmark = pytest.mark.stack

QUEUE = "fallback:message_queue"
# A drain that is not done by then is stuck: fail with its state, well within pytest's timeout.
DRAIN_TIMEOUT_S = 45.0
# A worker process that takes big batches and is presumed dead one second after it stops beating.
FAST_HEARTBEAT = {
    "FALLBACK_BATCH_SIZE": "500",
    "FALLBACK_POLL_INTERVAL": "0.1",
    "CHAT4ALL_FALLBACK_HEARTBEAT_TTL_S": "1",
}


@pytest.fixture
async def redis(stack: StackEndpoints) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    yield client
    await client.aclose()


def bare(n: int) -> bytes:
    return orjson.dumps(
        {"message_id": str(uuid.UUID(int=n)), "conversation_id": n % 7, "n": n, "channels": []}
    )


def backfill_settings(stack: StackEndpoints, prefix: str, topic: str, **extra: Any) -> Settings:
    return settings_for(
        stack,
        redis_prefix=prefix,
        topics={"message_processing": topic},
        fallback={"poll_interval_s": 0.1, "batch_size": 50, **extra},
    )


async def backfill_process(
    stack: StackEndpoints, prefix: str, topic: str, cwd: Path, extra: dict[str, str]
) -> asyncio.subprocess.Process:
    """`chat4all-workers run --roles backfill` as a real process (for signals and kill -9)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "REDIS_URL": stack.redis_url,
        "CHAT4ALL_REDIS_KEY_PREFIX": prefix,
        "CHAT4ALL_TOPICS_MESSAGE_PROCESSING": topic,
        "METRICS_PORT": str(free_port()),
        **extra,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat4all_workers", "run", "--roles", "backfill",
        env=env, cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def test_backfill_delivers_bare_values_and_envelopes_then_empties_the_queue(
    stack: StackEndpoints, redis: aioredis.Redis, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    other = await kafka_topic(partitions=1)
    envelope = {"topic": other, "key": "k-1", "value": {"a": 1}, "headers": {"h": "v"}}
    await redis.rpush(redis_prefix + QUEUE, bare(1), orjson.dumps(envelope), bare(2))

    settings = backfill_settings(stack, redis_prefix, topic)
    async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
        await drained(app, redis, redis_prefix + QUEUE)
        assert app.metrics.fallback_queue_length.get({}) == 0

    main = await wait_for_records(stack, topic, expect=2)
    assert [(r[1], r[2]) for r in main] == [
        (b"conversation:1", bare(1)),
        (b"conversation:2", bare(2)),
    ]
    (enveloped,) = await wait_for_records(stack, other, expect=1)
    assert (enveloped[1], orjson.loads(enveloped[2]), enveloped[3]["h"]) == (b"k-1", {"a": 1}, b"v")
    assert await redis.llen(redis_prefix + QUEUE) == 0
    assert [k async for k in redis.scan_iter(match=f"{redis_prefix}{QUEUE}:processing:*")] == []


async def test_backfill_moves_invalid_items_to_the_dead_list_with_the_reason(
    stack: StackEndpoints, redis: aioredis.Redis, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    await redis.rpush(redis_prefix + QUEUE, b"not json", b'{"x": 1}', bare(3))

    settings = backfill_settings(stack, redis_prefix, topic)
    async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
        await drained(app, redis, redis_prefix + QUEUE)

    dead = [orjson.loads(d) for d in await redis.lrange(f"{redis_prefix}{QUEUE}:dead", 0, -1)]
    assert [d["item"] for d in dead] == ["not json", '{"x": 1}']
    assert all(d["reason"] for d in dead)
    assert [r[2] for r in await wait_for_records(stack, topic, expect=1)] == [bare(3)]


async def test_backfill_recovers_items_of_a_worker_whose_heartbeat_expired(
    stack: StackEndpoints, redis: aioredis.Redis, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    queue = redis_prefix + QUEUE
    await redis.sadd(f"{queue}:workers", "gone-1")
    await redis.rpush(f"{queue}:processing:gone-1", bare(1), bare(2))  # no heartbeat key
    await redis.rpush(queue, bare(3))

    settings = backfill_settings(stack, redis_prefix, topic)
    async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
        await drained(app, redis, queue)

    assert [r[2] for r in await wait_for_records(stack, topic, expect=3)] == [
        bare(1),
        bare(2),
        bare(3),
    ]
    assert await redis.exists(f"{queue}:processing:gone-1") == 0
    assert await redis.smembers(f"{queue}:workers") == set()


async def test_backfill_killed_between_take_and_ack_loses_nothing(
    stack: StackEndpoints,
    redis: aioredis.Redis,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
    tmp_path: Path,
) -> None:
    topic = await kafka_topic(partitions=3)
    queue = redis_prefix + QUEUE
    total = 20_000
    for start in range(0, total, 1000):
        await redis.rpush(queue, *(bare(n) for n in range(start, start + 1000)))
    child = await backfill_process(stack, redis_prefix, topic, tmp_path, FAST_HEARTBEAT)
    try:
        await eventually(
            lambda: _holding(redis, queue), timeout_s=30, interval_s=0.001, message="items taken"
        )
        child.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()  # a failed wait above must not leave the worker running
        await child.wait()
    assert await _holding(redis, queue), "the kill did not land between take and ack"

    settings = backfill_settings(stack, redis_prefix, topic, heartbeat_ttl_s=1.0, batch_size=500)
    await eventually(lambda: _heartbeats_expired(redis, queue), timeout_s=5)
    async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
        await drained(app, redis, queue)

    records = await wait_for_records(stack, topic, expect=total)
    delivered = {orjson.loads(r[2])["n"] for r in records}
    assert delivered == set(range(total))
    assert await redis.llen(queue) == 0


async def test_backfill_worker_recovered_while_paused_rejoins_and_is_recovered_again(
    stack: StackEndpoints,
    redis: aioredis.Redis,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
    tmp_path: Path,
) -> None:
    """A worker paused past its heartbeat TTL (SIGSTOP: a long GC pause, a Redis outage) is
    presumed dead and removed; once it runs again its heartbeat must make it a member again, or
    the items it holds when it really dies later are never recovered."""
    topic = await kafka_topic(partitions=3)
    queue = redis_prefix + QUEUE
    settings = backfill_settings(stack, redis_prefix, topic, heartbeat_ttl_s=1.0, batch_size=500)
    child = await backfill_process(stack, redis_prefix, topic, tmp_path, FAST_HEARTBEAT)
    try:
        await eventually(lambda: _members(redis, queue, 1), timeout_s=30, message="registered")
        child.send_signal(signal.SIGSTOP)
        await eventually(lambda: _heartbeats_expired(redis, queue), timeout_s=5)
        async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
            # Its start-up recovery presumes the paused worker dead.
            await drained(app, redis, queue)
        recovered_while_paused = await redis.scard(f"{queue}:workers") == 0
        child.send_signal(signal.SIGCONT)
        await eventually(lambda: _members(redis, queue, 1), timeout_s=10, message="rejoined")

        total = 20_000
        for start in range(0, total, 1000):
            await redis.rpush(queue, *(bare(n) for n in range(start, start + 1000)))
        await eventually(
            lambda: _holding(redis, queue), timeout_s=30, interval_s=0.001, message="items taken"
        )
        child.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGCONT)
            child.kill()
        await child.wait()
    await eventually(lambda: _heartbeats_expired(redis, queue), timeout_s=5)
    async with App(settings, roles=["backfill"], drain=True, serve_http=False) as app:
        await drained(app, redis, queue)

    assert recovered_while_paused
    records = await wait_for_records(stack, topic, expect=total)
    assert {orjson.loads(r[2])["n"] for r in records} == set(range(total))
    assert await redis.llen(queue) == 0


async def drained(
    app: App, redis: aioredis.Redis, queue: str, *, timeout_s: float = DRAIN_TIMEOUT_S
) -> None:
    """`app.wait()` of a drain, failing after `timeout_s` with what the drain was waiting on."""
    try:
        async with asyncio.timeout(timeout_s):
            await app.wait()
    except TimeoutError:
        raise AssertionError(
            f"drain not done after {timeout_s}s: {await _drain_state(app, redis, queue)}"
        ) from None


async def _drain_state(app: App, redis: aioredis.Redis, queue: str) -> str:
    processing = {
        key.decode(): int(await redis.llen(key))
        async for key in redis.scan_iter(match=f"{queue}:processing:*")
    }
    assert app.resources is not None
    producer = app.resources.kafka()
    return (
        f"queue length {await redis.llen(queue)}, processing lists {processing}, "
        f"breaker {producer.breaker.stats()}, {producer.unacknowledged} records unacknowledged, "
        f"roles {app.stats()}"
    )


async def _members(redis: aioredis.Redis, queue: str, count: int) -> bool:
    return int(await redis.scard(f"{queue}:workers")) == count


async def test_backfill_continues_the_trace_an_item_was_parked_with(
    stack: StackEndpoints,
    redis: aioredis.Redis,
    redis_prefix: str,
    kafka_topic: KafkaTopicFactory,
    tmp_path: Path,
) -> None:
    """As a worker process (the CLI sets tracing up): an envelope parked with a `traceparent`
    goes on in a child span of that trace; a bare item starts a trace of its own."""
    topic = await kafka_topic(partitions=1)
    trace_id, parked_span = "ab" * 16, "cd" * 8
    envelope = {
        "topic": topic,
        "key": "conversation:1",
        "value": {"n": 1},
        "headers": {"traceparent": f"00-{trace_id}-{parked_span}-01"},
    }
    await redis.rpush(redis_prefix + QUEUE, orjson.dumps(envelope), bare(2))
    child = await backfill_process(
        stack, redis_prefix, topic, tmp_path, {"FALLBACK_POLL_INTERVAL": "0.1"}
    )
    try:
        records = await wait_for_records(stack, topic, expect=2)
    finally:
        child.terminate()
        await child.wait()

    continued, started = (r[3]["traceparent"].decode().split("-") for r in records)
    assert (continued[1], continued[3]) == (trace_id, "01")  # the parked trace, still sampled
    assert continued[2] != parked_span  # in a span of its own
    assert started[1] != trace_id
    assert len(started[1]) == 32


async def _holding(redis: aioredis.Redis, queue: str) -> bool:
    """Some registered worker holds taken, unacknowledged items right now. Its processing list
    is found through the members' set, not by SCAN: a SCAN walks the whole shared keyspace, and
    with a few tens of thousands of other keys one look took longer than the worker holds a
    batch (a red run)."""
    for worker in await redis.smembers(f"{queue}:workers"):
        name = worker.decode() if isinstance(worker, bytes) else worker
        if await redis.llen(f"{queue}:processing:{name}"):
            return True
    return False


async def _heartbeats_expired(redis: aioredis.Redis, queue: str) -> bool:
    return [k async for k in redis.scan_iter(match=f"{queue}:heartbeat:*")] == []


async def test_kafka_outage_parks_status_updates_holds_outbox_and_loses_nothing(
    stack: StackEndpoints,
    redis: aioredis.Redis,
    redis_prefix: str,
    pg_database: str,
    kafka_topic: KafkaTopicFactory,
) -> None:
    """The producer reaches Kafka only through a proxy the test stops and starts (see
    durable_support.KafkaProxy); status updates are produced as the router does, with
    fallback=True, through the process's one producer."""
    events_topic = await kafka_topic(partitions=2)
    status_topic = await kafka_topic(partitions=2)
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=2)
    proxy = KafkaProxy(stack.kafka_bootstrap)
    await proxy.start()
    settings = settings_for(
        stack,
        database_url=pg_database,
        redis_prefix=redis_prefix,
        topics={"message_events": events_topic, "message_status_updates": status_topic},
        kafka={"bootstrap_servers": proxy.address, "request_timeout_ms": 2000},
        breaker={"failure_threshold": 2, "cooldown_s": 1.0, "ack_timeout_s": 1.0},
        outbox={"poll_interval_ms": 100},
        fallback={"poll_interval_s": 0.2},
    )
    try:
        async with App(settings, roles=["outbox", "backfill"], serve_http=False) as app:
            await app.wait_ready()
            assert app.resources is not None
            producer = app.resources.kafka()
            await _insert_events(pool, range(0, 100))
            await eventually(lambda: _unpublished(pool, 0), message="first events published")

            await proxy.stop()
            for n in range(50):
                await producer.send(_status_update(status_topic, n), fallback=True)
            await _insert_events(pool, range(100, 200))
            assert app.metrics.breaker_state.get({"service": "kafka"}) != BreakerState.CLOSED
            assert await redis.llen(redis_prefix + QUEUE) > 0
            assert await _count(pool, "NOT published") == 100  # they wait

            await proxy.start()
            await eventually(lambda: _unpublished(pool, 0), timeout_s=30, message="outbox")
            await eventually(lambda: _queue_empty(redis, redis_prefix), timeout_s=30)
            assert producer.breaker.state is BreakerState.CLOSED
    finally:
        await proxy.stop()
        await pool.close()

    events = await wait_for_records(stack, events_topic, expect=200)
    statuses = await wait_for_records(stack, status_topic, expect=50)
    assert {orjson.loads(r[2])["n"] for r in events} == set(range(200))
    assert {orjson.loads(r[2])["n"] for r in statuses} == set(range(50))


async def _insert_events(pool: asyncpg.Pool, ns: range) -> None:
    await pool.execute(
        """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
           SELECT gen_random_uuid(), 'message', (n % 10)::text, 'message.updated',
                  jsonb_build_object('n', n)
           FROM generate_series($1::int, $2::int) n""",
        ns.start,
        ns.stop - 1,
    )


def _status_update(topic: str, n: int) -> OutgoingRecord:
    value = {"message_id": str(uuid.UUID(int=n)), "conversation_id": 1, "channel": "whatsapp",
             "new_status": "SENT", "n": n}  # fmt: skip
    return OutgoingRecord(topic, orjson.dumps(value), b"conversation:1")


async def _count(pool: asyncpg.Pool, where: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM outbox_events WHERE {where}"))


async def _unpublished(pool: asyncpg.Pool, expected: int) -> bool:
    return await _count(pool, "NOT published") == expected


async def _queue_empty(redis: aioredis.Redis, prefix: str) -> bool:
    return await redis.llen(prefix + QUEUE) == 0
