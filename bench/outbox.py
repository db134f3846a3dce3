"""Outbox benchmark: throughput with batch 500, and commit-to-Kafka latency, NOTIFY vs polling.

Runs against the real services (the devstack env: DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS,
REDIS_URL), each scenario in its own scratch database and topic, which are dropped afterwards.

- throughput: events inserted in transactions of 500 as fast as one connection can, while one
  poller (batch 500) runs; events/s = events / (first insert -> last row marked published,
  i.e. after Kafka's acknowledgement).
- latency: 100 events/s, one transaction each; latency = commit -> the record reaches a consumer
  (an upper bound of commit -> ack: it adds the consumer's fetch, with fetch_max_wait 5 ms).
  Once woken by LISTEN/NOTIFY (poll 500 ms as a safety net), once by pure 500 ms polling (the
  poller listens on a channel nobody notifies).

    python bench/outbox.py [--events 20000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.roles import load_settings

DSN = os.environ.get("DATABASE_URL", "postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all")
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def scratch() -> AsyncIterator[tuple[str, str]]:
    """A fresh migrated database and a 4-partition topic, removed afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin_pg = await asyncpg.connect(DSN)
    await admin_pg.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(DSN)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])
    try:
        yield dsn, name
    finally:
        await admin.delete_topics([name])
        await admin.close()
        await admin_pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin_pg.close()


def settings(dsn: str, topic: str, **outbox: object) -> Settings:
    return load_settings(
        {},
        {
            "kafka": {"bootstrap_servers": KAFKA},
            "postgres": {"url": dsn},
            "redis": {"url": REDIS, "key_prefix": f"{topic}:"},
            "topics": {"message_events": topic},
            "outbox": outbox,
        },
    )


INSERT = """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
            SELECT gen_random_uuid(), 'conversation', (a % 500)::text, 'message.updated',
                   jsonb_build_object('conversation_id', a % 500, 'n', a)
            FROM generate_series($1::int, $2::int) a"""


async def throughput(events: int) -> float:
    async with scratch() as (dsn, topic):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        async with App(settings(dsn, topic, batch_size=500), roles=["outbox"],
                              serve_http=False) as app:  # fmt: skip
            await app.wait_ready()
            started = time.perf_counter()
            for start in range(0, events, 500):
                await pool.execute(INSERT, start, min(start + 500, events) - 1)
            unpublished = "SELECT count(*) FROM outbox_events WHERE NOT published"
            while await pool.fetchval(unpublished):  # noqa: ASYNC110 - polling the table is the point
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
        await pool.close()
        return events / elapsed


async def latency(seconds: float, *, notify: bool) -> list[float]:
    async with scratch() as (dsn, topic):
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        channel = "outbox_events" if notify else "bench_nobody_notifies"
        conf = settings(dsn, topic, poll_interval_ms=500, notify_channel=channel)
        committed: dict[str, float] = {}
        arrived: dict[str, float] = {}
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, fetch_max_wait_ms=5,
                                    auto_offset_reset="earliest")  # fmt: skip
        await consumer.start()

        async def consume() -> None:
            async for record in consumer:
                arrived[dict(record.headers)["event_id"].decode()] = time.perf_counter()

        reader = asyncio.create_task(consume())
        async with App(conf, roles=["outbox"], serve_http=False) as app:
            await app.wait_ready()
            total = int(seconds * 100)
            t0 = time.perf_counter()
            for n in range(total):
                await asyncio.sleep(max(0.0, t0 + n / 100 - time.perf_counter()))
                event_id = str(uuid.uuid4())
                await pool.execute(
                    "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, "
                    "payload) VALUES ($1, 'conversation', $2, 'message.updated', $3::jsonb)",
                    uuid.UUID(event_id), str(n % 50), orjson.dumps({"n": n}).decode(),
                )  # fmt: skip
                committed[event_id] = time.perf_counter()
            deadline = time.perf_counter() + 30
            while len(arrived) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await consumer.stop()
        await pool.close()
        return [arrived[e] - committed[e] for e in committed if e in arrived]


def summary(label: str, samples: list[float], expected: int) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{label:<22} n={len(ms)}/{expected}  median={statistics.median(ms):7.1f} ms  "
        f"p99={p99:7.1f} ms  max={ms[-1]:7.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = sys.stdout.write
    rate = await throughput(args.events)
    out(f"throughput (batch 500)  {args.events} events: {rate:,.0f} events/s insert->ack\n")
    expected = int(args.seconds * 100)
    out(summary("latency LISTEN/NOTIFY", await latency(args.seconds, notify=True), expected) + "\n")
    out(
        summary("latency polling 500ms", await latency(args.seconds, notify=False), expected) + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
