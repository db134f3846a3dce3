"""Router benchmark: throughput and memory against a fake provider, next to two baselines, one run;
and the router at a provider's pace, against the real channel mocks.

    python bench/router.py [--messages 50000] [--rounds 3] [--partitions 12]
                           [--conversations 2000] [--latency-ms 50] [--baseline-seconds 20]
                           [--max-in-flight N] [--engine-floor]
    python bench/router.py --phase paced [--paced-messages 5000] [--paced-conversations 500]
                           [--paced-rate 80] [--routers 3] [--random-throttle SHARE]
    python bench/router.py --phase pause [--paced-messages 5000] [--paced-rate 80]
                           [--routers 3] [--pause-s 20]

Runs against the real services (the devstack env: KAFKA_BOOTSTRAP_SERVERS, REDIS_URL,
DATABASE_URL, MINIO_*). One input topic of --messages text messages (--conversations
conversations, key `conversation:{id}`, --partitions partitions) is produced once; every phase
reads it with its own consumer group and writes to its own output topic:

(a) provider latency 0: the router against its library floor (below); target router/floor
    >= 0.9. A bare aiokafka loop (getmany, produce one status record per record, await the
    acks, commit) is shown too, as the machine's ceiling for Kafka alone (no target: it does no
    HTTP and no Redis, so a ratio to it measures the provider, not the router).
(b) provider latency --latency-ms: the router against its library floor at that latency;
    target router/floor >= 0.9. One record at a time per partition (fetch, send through the
    same adapter, produce its status, await the ack, next) is shown too, time-boxed to
    --baseline-seconds (no target: it is latency-bound, so a ratio to it measures the machine).
(c) the router's RSS during (b), sampled with psutil every 100 ms; target peak < 250 MB.

In (a) and (b) the floor and the router take turns, --rounds each (floor, router, floor, ...),
every turn reading all --messages with a consumer group of its own; each one's rate is its
messages over its time summed over its turns, and each turn's ratio is printed too. Why turns:
this machine's speed drifts by tens of percent from one minute to the next (the floor's CPU per
message ranged 152-209 us over one day's runs of the same tree, 2026-12-06), and a floor
measured a minute before the router made a ratio of that drift.

The library floor (`library_floor`) is the I/O the router does per record (the recipient's
window read, the dedup claim and mark: the same Redis commands, pipelined; the adapter's POST;
the status produce) with none of its logic (validation, per-conversation order, leases,
retries, tracing, metrics), through the same I/O code: aiokafka, our HTTP client, and our
Redis auto-pipeline on its own connection (autopipeline.py, redis_link.py). The router's own
cost is the gap to it. Until 2026-12-07 the floor's Redis went through redis-py's Pipeline,
which costs about 30 us per message more than the router's path (three commands): a floor
that is not the router's I/O is not its floor, and made the router's ratio look 10 to 20 %
better than its logic deserved.
With --engine-floor, (a) and (b) also run the engine floor after each router turn (`engine_floor`,
its own process, as the router): the router's consumer engine (per-conversation order, commits
of finished work, the record's span and retries) and its status path (the status record, the
coalescer, the trace headers) over the library floor's I/O, without the router's own logic
(validation, accounts, leases, windows, pace, attempts, counters, log context). No target: it
splits the router's gap to its library floor into the engine's share and the router logic's.
Every phase reports CPU per message of each process involved (the loop or router, the fake
provider, Kafka, Redis) and how busy it kept the machine: on a small machine the ratios are
bounded by cores, and those figures say by how much.

(paced) `--paced-messages` WhatsApp messages over `--paced-conversations` conversations, through
    `--routers` router processes in one consumer group, against the real WhatsApp mock
    (`whatsapp_mock`, its own process) enforcing `--paced-rate` messages/s per account (HTTP 400
    with code 130429 above it, as Meta answers) and Meta's pair limit; the routers pace at the
    same rate, shared through Redis. Targets: every message SENT once, none dead-lettered,
    throttled answers <= 1 % of the calls, achieved rate >= 95 % of the limit, order per
    conversation kept; CPU per message per process. With `--random-throttle SHARE` the mock
    also answers that share of calls 429 at random, whatever the rate (its
    `mocks.random_throttle_rate`): throttles that are not the rate. Targets then: accepted sends
    per second >= 50 % of the configured rate (the pace holds, it does not walk down to its
    floor); the throttled share is reported against the share asked for.
(pause) as (paced), plus as many Instagram messages (routers and mock both at `--paced-rate`),
    and the WhatsApp token expired for `--pause-s` seconds mid-stream (the mock's
    `POST /__mock__/token`). Targets: none dead-lettered or lost, each process paused after one
    failed call (its probes aside), resumed within 60 s of the token working; Instagram's rate
    during the pause against its rate before, reported.

The router runs as a subprocess (`--worker`): a real `App(roles=["router"], drain=True)`,
so its RSS is its own and it exits once caught up. The fake provider (an aiohttp app answering
like the WhatsApp Cloud API, `POST /{version}/{phone}/messages` -> {"messages":[{"id":"wamid.N"}]})
is a second process, so its CPU is not the router's event loop. Throughput is measured from the
first record consumed (the provider's first request for the router, the first non-empty fetch for
the baselines) to the last status record produced (its Kafka timestamp for the router, its ack for
the baselines). Topics, consumer groups and the Redis keys (the 24 h dedup markers, under a run
prefix) are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import psutil
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.structs import ConsumerRecord

from chat4all_workers import collector
from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import KafkaSettings, Settings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.consuming import consume
from chat4all_workers.db.migrate import migrate
from chat4all_workers.formats.status_update import status_record
from chat4all_workers.kafka.admin import wait_for_leaders
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.partitioning import KeyPartitioner
from chat4all_workers.kafka.producer import Delivery
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.observability.metrics import total
from chat4all_workers.role import RoleContext, RoleSpec
from chat4all_workers.roles import REGISTRY, load_settings

# Run as a script, so the repository is put on the path for the shared bench helpers.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.procs import CpuMeter, RssSampler, read_line, service_pids, stop_process  # noqa: E402
from harness.topics import produce_documents  # noqa: E402

MB = 1024 * 1024
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
REDIS = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = os.environ.get("DATABASE_URL", Settings().postgres.url.get())
out = sys.stdout.write

# The fake provider, run with `python -c`: no import of our package, and its own CPU.
PROVIDER = r"""
import asyncio, json, sys, time
from aiohttp import web

latency_s = float(sys.argv[1]) / 1000
stats = {"accepted": 0, "first": None, "last": None}

async def messages(request):
    await request.read()
    now = time.time()
    if stats["first"] is None:
        stats["first"] = now
    if latency_s:
        await asyncio.sleep(latency_s)
    stats["accepted"] += 1
    stats["last"] = time.time()
    body = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.%d"}]}' % stats["accepted"]
    return web.Response(body=body, content_type="application/json")

async def get_stats(request):
    return web.json_response(stats)

async def main():
    app = web.Application()
    app.router.add_post("/{version}/{phone}/messages", messages)
    app.router.add_get("/__bench__/stats", get_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()

asyncio.run(main())
"""


# -- the router subprocess ------------------------------------------------------------------------


async def worker(doc: dict[str, Any], *, roles: list[str | RoleSpec], drain: bool) -> None:
    """A router (or the mocks) in this process, until drained or SIGTERM. Prints READY, then at
    the end `DONE <restarts>` and `STATS <json>`: the channel calls by outcome, and each change
    of a sending account's state (paused, active) with its time and probes."""
    from chat4all_workers.app import App
    from chat4all_workers.observability.logging import configure_logging
    from chat4all_workers.observability.tracing import configure_tracing

    settings = load_settings({}, doc)
    # As `chat4all-workers run` sets the process up (spans exist, exported only with an OTLP
    # endpoint), so the router pays what it pays in production.
    configure_logging(level="WARNING", service="supervisor")
    configure_tracing(service_name="bench-router", otlp_endpoint="")
    async with App(settings, roles=roles, drain=drain, serve_http=False) as sup:
        collector.freeze()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, sup.request_stop)
        await sup.wait_ready(timeout_s=60)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        changes: list[dict[str, Any]] = []

        async def watch_accounts() -> None:
            last: dict[str, str] = {}
            while True:
                for name, state in sup.published().get("accounts", {}).items():
                    if last.get(name, "active") != state["state"]:
                        changes.append({"account": name, **state})
                    elif state["state"] == "paused" and changes:
                        changes[-1]["probes"] = state["probes"]
                    last[name] = state["state"]
                await asyncio.sleep(0.05)

        async with asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch_accounts())
            await sup.wait()
            watcher.cancel()
        restarts = sum(s.restarts_total for s in sup.stats())
        requests = {}
        for channel in ("whatsapp", "instagram"):
            for outcome in ("sent", "throttled", "transient", "in_doubt", "rejected", "paused"):
                count = total(sup.metrics.channel_requests, channel=channel, outcome=outcome)
                requests[f"{channel}:{outcome}"] = count
        stats = {
            "requests": requests,
            "changes": changes,
            "accounts": sup.published().get("accounts", {}),
        }
        sys.stdout.write(f"DONE {restarts}\nSTATS {orjson.dumps(stats).decode()}\n")
        sys.stdout.flush()


async def engine_floor(ctx: RoleContext) -> None:
    """The engine floor's role: the router's consumer engine (keyed order, commits of finished
    work, the record's span, its retries) and its status path (`status_record`, the
    coalescer, the trace headers), over the library floor's I/O per record (the window `GET`
    and the claim's `SET NX` on the router's auto-pipeline, the adapter's POST, the mark's
    `SET`, the SENT status). None of the router's own logic: no validation, accounts, leases,
    windows, pace, attempts, counters or log context. The router's gap to it is that logic."""
    resources, settings = ctx.resources, ctx.settings
    pipe, key = resources.redis_pipeline(), resources.redis_key
    coalescer = ProduceCoalescer(resources.kafka(), spawn=resources.spawn())
    adapter = WhatsAppAdapter(settings.whatsapp, resources.http_client())
    topic = settings.topics.message_status_updates

    async def handle(record: ConsumedRecord) -> None:
        assert record.value is not None
        doc = orjson.loads(record.value)
        marker = key(f"message:dedup:{doc['message_id']}:whatsapp")
        recipient = doc["recipients"]["whatsapp"]
        window = pipe.execute("GET", key(f"window:whatsapp:1000:{recipient}"))
        claim = pipe.execute("SET", marker, "lease", "NX", "EX", 86_400)
        await window
        await claim
        message = OutboundMessage(
            message_id=doc["message_id"],
            conversation_id=doc["conversation_id"],
            recipient=recipient,
            kind="text",
            text=doc["payload"]["content"],
        )
        pid = (await adapter.send(message)).provider_message_id
        mark = pipe.execute("SET", marker, f"sent:{pid}", "EX", 86_400)
        status = status_record(
            topic,
            message_id=doc["message_id"],
            conversation_id=doc["conversation_id"],
            channel="whatsapp",
            status="SENT",
            details={"provider_message_id": pid},
        )
        (outcome,) = await coalescer.send_each([status])
        await mark
        if not isinstance(outcome, Delivery):
            raise outcome

    await consume(ctx, topic=settings.topics.message_processing, handler=handle)


# The router's role with `engine_floor` for its run: the router's settings, group and needs.
ENGINE_FLOOR = dataclasses.replace(REGISTRY["router"], run=engine_floor)


# -- processes ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_provider(latency_ms: float) -> AsyncIterator[Provider]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROVIDER, str(latency_ms), stdout=asyncio.subprocess.PIPE
    )
    try:
        port = int((await read_line(proc, "READY", 30)).split()[1])
        async with aiohttp.ClientSession() as http:
            yield Provider(f"http://127.0.0.1:{port}", http, proc.pid)
    finally:
        await stop_process(proc)


@dataclass
class Provider:
    base_url: str
    http: aiohttp.ClientSession
    pid: int

    def adapter(self, http: HttpClient) -> WhatsAppAdapter:
        """The router's own WhatsApp adapter, pointed here: what the baselines send through."""
        settings = WhatsAppSettings(
            base_url=self.base_url, phone_number_id="1000", access_token=Secret("bench")
        )
        return WhatsAppAdapter(settings, http)

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base_url}/__bench__/stats") as response:
            result: dict[str, Any] = await response.json()
            return result


# -- the run's scratch resources ------------------------------------------------------------------


def router_group(doc: dict[str, Any]) -> str:
    """The router's consumer group under the settings `doc`, as the engine derives it."""
    return KafkaSettings(consumer_group=doc["kafka"]["consumer_group"]).group_for("router")


@dataclass
class Scratch:
    run: str
    partitions: int
    # A migrated database of the run's own: the router and the webhooks role read the accounts
    # tables at start-up (accounts/directory.py).
    database_url: str = ""
    topics: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)

    def topic(self, name: str) -> str:
        return self.topics.setdefault(name, f"bench-router-{self.run}-{name}")

    def group(self, name: str) -> str:
        group = f"bench-router-{self.run}-{name}"
        self.groups.append(group)
        return group

    def redis_prefix(self, phase: str) -> str:
        """Each router phase has its own dedup markers (else (b) would find (a)'s "sent")."""
        return f"bench-router-{self.run}-{phase}:"


@contextlib.asynccontextmanager
async def scratch(
    partitions: int,
    names: tuple[str, ...] = ("in", "status-a", "status-b", "dlq", "bare", "serial", "floor"),
) -> AsyncIterator[Scratch]:
    """Topics and a migrated database created up front; topics, consumer groups, the database
    and Redis keys removed afterwards."""
    s = Scratch(uuid.uuid4().hex[:8], partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    database = f"bench_router_{s.run}"
    pg = await asyncpg.connect(DATABASE)
    try:
        await pg.execute(f'CREATE DATABASE "{database}"')
        s.database_url = urlunsplit(urlsplit(DATABASE)._replace(path=f"/{database}"))
        conn = await asyncpg.connect(s.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await admin.create_topics(
            [NewTopic(s.topic(n), num_partitions=partitions, replication_factor=1) for n in names]
        )
        # Else the input is written into leader elections (a broker may still refuse a first
        # send or two as NotLeaderForPartition; the producer retries those, and logs them).
        await wait_for_leaders(admin, dict.fromkeys(s.topics.values(), partitions))
        yield s
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(s.topics.values()))
        # aiokafka's admin has no delete_consumer_groups; DeleteGroups is one request.
        for group in s.groups:
            with contextlib.suppress(Exception):
                node = await admin.find_coordinator(group)
                await admin._send_request(DeleteGroupsRequest([group]), node)
        await admin.close()
        with contextlib.suppress(Exception):
            await pg.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await pg.close()
        removed = await delete_redis_keys(f"bench-router-{s.run}-")
        out(f"cleanup: topics, {len(s.groups)} consumer groups, {removed} Redis keys removed\n")


async def delete_redis_keys(prefix: str) -> int:
    redis = aioredis.Redis.from_url(REDIS)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{prefix}*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                removed += await redis.unlink(*batch)
                batch.clear()
        if batch:
            removed += await redis.unlink(*batch)
    finally:
        await redis.aclose()
    return removed


async def produce_messages(
    topic: str, count: int, conversations: int, *, channels: tuple[str, ...] = ("whatsapp",)
) -> list[dict[str, Any]]:
    """`count` text messages round-robin over `conversations` (and over `channels`: conversation
    c goes to channels[c % len]); the documents produced, in order."""

    def doc(n: int) -> dict[str, Any]:
        conversation = n % conversations
        channel = channels[conversation % len(channels)]
        return {
            "message_id": str(uuid.uuid4()),
            "conversation_id": conversation,
            "sender_id": 7,
            "sender_username": "ana",
            "payload": {"type": "text", "content": f"message {n} of conversation {conversation}"},
            "channels": [channel],
            "recipients": {channel: f"+55{conversation:011d}"},
            "created_at": "2026-11-28T10:30:00Z",
        }

    return await produce_documents(KAFKA, topic, (doc(n) for n in range(count)))


async def end_offsets_total(topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class StatusSummary:
    records: int
    sent_messages: int
    first_ms: int
    last_ms: int


async def read_statuses(topic: str, partitions: int) -> StatusSummary:
    """Every status record of `topic`: how many messages got SENT, and the produce time span."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        sent: set[str] = set()
        records, first_ms, last_ms = 0, 2**63, 0
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for items in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in items:
                    records += 1
                    first_ms, last_ms = min(first_ms, r.timestamp), max(last_ms, r.timestamp)
                    doc = orjson.loads(r.value)
                    if doc.get("new_status") == "SENT":
                        sent.add(doc["message_id"])
        return StatusSummary(records, len(sent), first_ms, last_ms)
    finally:
        await consumer.stop()


# -- the router -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterRun:
    rate: float
    seconds: float
    provider_sends: int
    statuses: StatusSummary
    dlq: int
    restarts: int
    rss_ready: int
    rss_mid: int  # halfway through the run: a leak keeps climbing, a working set levels off
    rss_peak: int
    rss_done: int
    cpu: CpuMeter


def router_settings(
    s: Scratch, phase: str, base_url: str, max_in_flight: int | None
) -> dict[str, Any]:
    secure = os.environ.get("MINIO_SECURE", "false").lower() in ("1", "true", "yes")
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": KAFKA, "consumer_group": f"bench-router-{s.run}-{phase}"},
        "topics": {
            "message_processing": s.topic("in"),
            "message_status_updates": s.topic(f"status-{phase}"),
            "dlq": s.topic("dlq"),
        },
        "redis": {"url": REDIS, "key_prefix": s.redis_prefix(phase)},
        "postgres": {"url": s.database_url},
        "s3": {
            "endpoint": os.environ.get("MINIO_ENDPOINT", "127.0.0.1:9000"),
            "access_key": os.environ.get("MINIO_ACCESS_KEY", "chat4all"),
            "secret_key": os.environ.get("MINIO_SECRET_KEY", "chat4all-secret"),
            "bucket": os.environ.get("MINIO_BUCKET", "chat4all-files"),
            "secure": secure,
        },
        # (a) and (b) measure the router's own cost: no pacing (no Redis call for it).
        "whatsapp": {
            "base_url": base_url,
            "access_token": "bench",
            "phone_number_id": "1000",
            "max_rate_per_s": 0.0,
            "pair_burst": 0,
        },
        "observability": {"log_level": "WARNING"},
    }
    if max_in_flight:
        doc["kafka"]["max_in_flight"] = max_in_flight
    return doc


async def run_router(
    s: Scratch,
    phase: str,
    latency_ms: float,
    messages: int,
    max_in_flight: int | None,
    role: str = "router",
) -> RouterRun:
    """The router (or `role`: "engine_floor") through every message, in its own process."""
    async with fake_provider(latency_ms) as provider:
        doc = router_settings(s, phase, provider.base_url, max_in_flight)
        s.groups.append(router_group(doc))  # the engine's group, for cleanup
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", orjson.dumps(doc).decode(),
            "--worker-roles", role, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            with RssSampler(proc.pid) as sampler:
                await read_line(proc, "READY", 90)
                rss_ready = sampler.rss()
                cpu = CpuMeter({role: proc.pid, "provider": provider.pid, **service_pids()})
                cpu.start()
                done = await read_line(proc, "DONE", 3600)
                cpu.stop()
                rss_done = sampler.rss()
            await proc.wait()
        finally:
            await stop_process(proc)
        stats = await provider.stats()
    statuses = await read_statuses(s.topic(f"status-{phase}"), s.partitions)
    seconds = statuses.last_ms / 1000 - float(stats["first"])
    return RouterRun(
        rate=messages / seconds,
        seconds=seconds,
        provider_sends=int(stats["accepted"]),
        statuses=statuses,
        dlq=await end_offsets_total(s.topic("dlq"), s.partitions),
        restarts=int(done.split()[1]),
        rss_ready=rss_ready,
        rss_mid=sampler.samples[len(sampler.samples) // 2],
        rss_peak=sampler.peak,
        rss_done=rss_done,
        cpu=cpu,
    )


# -- baselines ------------------------------------------------------------------------------------


def status_of(value: bytes, provider_message_id: str = "") -> bytes:
    doc = orjson.loads(value)
    return orjson.dumps(
        {
            "message_id": doc["message_id"],
            "conversation_id": doc["conversation_id"],
            "channel": "whatsapp",
            "new_status": "SENT",
            "timestamp": time.time(),
            "details": {"provider_message_id": provider_message_id},
        }
    )


async def send_and_report(
    adapter: WhatsAppAdapter,
    producer: AIOKafkaProducer,
    topic: str,
    record: ConsumerRecord[bytes, bytes],
) -> None:
    """What a baseline does per record: the POST through the adapter, then the status record
    produced and its ack awaited. No validation, dedup or retries."""
    doc = orjson.loads(record.value)
    message = OutboundMessage(
        message_id=doc["message_id"],
        conversation_id=doc["conversation_id"],
        recipient=doc["recipients"]["whatsapp"],
        kind="text",
        text=doc["payload"]["content"],
    )
    result = await adapter.send(message)
    status = status_of(record.value, result.provider_message_id)
    await producer.send_and_wait(topic, status, key=record.key)


def routers_producer() -> AIOKafkaProducer:
    """A producer on the router's settings (acks=all, idempotent, linger 5 ms,
    kafka.max_batch_bytes) and its partitioner (murmur2 once per key): what the baselines produce
    their statuses with."""
    return AIOKafkaProducer(
        bootstrap_servers=KAFKA,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=KafkaSettings().max_batch_bytes,
        partitioner=KeyPartitioner(),
    )


async def bare_loop(s: Scratch, messages: int) -> tuple[float, CpuMeter]:
    """Records/s of the simplest at-least-once relay: getmany, produce a status per record (same
    producer settings as the router's: acks=all, idempotent, linger 5 ms, kafka.max_batch_bytes,
    the key's partition hashed once per key), await acks, commit."""
    consumer = AIOKafkaConsumer(
        s.topic("in"),
        bootstrap_servers=KAFKA,
        group_id=s.group("bare"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = routers_producer()
    await consumer.start()
    await producer.start()
    cpu = CpuMeter({"bench loop": os.getpid(), **service_pids()})
    cpu.start()
    try:
        done, first = 0, 0.0
        while done < messages:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            first = first or time.perf_counter()
            acks = [
                await producer.send(s.topic("bare"), status_of(r.value), key=r.key)
                for records in batch.values()
                for r in records
            ]
            await asyncio.gather(*acks)
            await consumer.commit()
            done += len(acks)
        cpu.stop()
        return done / (time.perf_counter() - first), cpu
    finally:
        await producer.stop()
        await consumer.stop()


async def one_at_a_time(
    s: Scratch, latency_ms: float, seconds: float
) -> tuple[float, int, CpuMeter]:
    """Records/s when each partition handles one record at a time: fetch one, send it, produce
    its status and await the ack, then the next; offsets committed every second."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA,
        group_id=s.group("serial"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=0
    )
    tps = [TopicPartition(s.topic("in"), p) for p in range(s.partitions)]
    positions: dict[TopicPartition, int] = {}
    await consumer.start()
    await producer.start()
    try:
        async with fake_provider(latency_ms) as provider, HttpClient() as http:
            adapter = provider.adapter(http)
            cpu = CpuMeter({"bench loop": os.getpid(), "provider": provider.pid, **service_pids()})
            cpu.start()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            started = asyncio.Event()
            clock: dict[str, float] = {}

            async def partition(tp: TopicPartition) -> int:
                done = 0
                while not started.is_set() or time.perf_counter() < clock["until"]:
                    batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
                    for record in batch.get(tp, []):
                        if not started.is_set():
                            clock["first"] = time.perf_counter()
                            clock["until"] = clock["first"] + seconds
                            started.set()
                        await send_and_report(adapter, producer, s.topic("serial"), record)
                        positions[tp] = record.offset + 1
                        clock["last"] = time.perf_counter()
                        done += 1
                return done

            async def commit_every_second() -> None:
                while True:
                    await asyncio.sleep(1)
                    if positions:
                        await consumer.commit(dict(positions))

            async with asyncio.TaskGroup() as tasks:
                committer = tasks.create_task(commit_every_second())
                counts = await asyncio.gather(*(partition(tp) for tp in tps))
                committer.cancel()
            cpu.stop()
            await consumer.commit(dict(positions))
        return sum(counts) / (clock["last"] - clock["first"]), sum(counts), cpu
    finally:
        await producer.stop()
        await consumer.stop()


async def library_floor(
    s: Scratch, phase: str, latency_ms: float, messages: int, max_in_flight: int
) -> tuple[float, CpuMeter]:
    """Records/s of the I/O the router does per record and nothing else, on the same libraries.

    Per fetched batch: one Redis pipeline of the recipients' window reads (`GET`) and the
    `SET NX` claims, then every record's POST through the same WhatsApp adapter and its status
    produce, awaited (concurrently, up to `max_in_flight` records), then one pipeline of `SET`
    marks: the Redis commands the router issues per message, through the router's own
    auto-pipeline; the statuses on the router's producer settings and partitioner. No
    validation, no per-key order, no leases, retries, tracing, logging context or metrics;
    offsets committed once at the end. What any router built on this I/O
    code (ours for HTTP and Redis, aiokafka) pays at least: the router's own logic is the gap
    between this and the router.
    """
    consumer = AIOKafkaConsumer(
        s.topic("in"),
        bootstrap_servers=KAFKA,
        group_id=s.group(f"floor-{phase}"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = routers_producer()
    redis = aioredis.Redis.from_url(REDIS)
    opened: list[AutoPipeline] = []  # its connection closed after the sends' owner
    prefix = s.redis_prefix(f"floor-{phase}")
    await consumer.start()
    await producer.start()
    try:
        async with (
            fake_provider(latency_ms) as provider,
            HttpClient() as http,
            Background() as background,
        ):
            pipe = AutoPipeline(redis, spawn=background.spawn)
            opened.append(pipe)
            adapter = provider.adapter(http)
            room = asyncio.Semaphore(max_in_flight)
            clock: dict[str, float] = {}

            async def batch(records: list[ConsumerRecord[bytes, bytes]]) -> None:
                docs = [orjson.loads(r.value) for r in records]
                keys = [prefix + doc["message_id"] for doc in docs]
                claims: list[tuple[str | int, ...]] = []
                for key, doc in zip(keys, docs, strict=True):
                    claims.append(("GET", f"{prefix}window:{doc['recipients']['whatsapp']}"))
                    claims.append(("SET", key, "lease", "NX", "EX", 86_400))
                await pipe.execute_many(claims)
                topic = s.topic("floor")
                await asyncio.gather(
                    *(send_and_report(adapter, producer, topic, r) for r in records)
                )
                await pipe.execute_many([("SET", key, "sent", "EX", 86_400) for key in keys])
                clock["last"] = time.perf_counter()
                for _ in records:
                    room.release()

            cpu = CpuMeter({"bench loop": os.getpid(), "provider": provider.pid, **service_pids()})
            cpu.start()
            async with asyncio.TaskGroup() as tasks:
                taken = 0
                while taken < messages:
                    await room.acquire()  # at least one free slot before fetching
                    room.release()
                    fetched = await consumer.getmany(timeout_ms=200, max_records=500)
                    records = [r for rs in fetched.values() for r in rs]
                    if not records:
                        continue
                    clock.setdefault("first", time.perf_counter())
                    for _ in records:
                        await room.acquire()
                    tasks.create_task(batch(records))
                    taken += len(records)
            cpu.stop()
            await consumer.commit()
        return taken / (clock["last"] - clock["first"]), cpu
    finally:
        for pipe in opened:
            pipe.close()
        await redis.aclose()
        await producer.stop()
        await consumer.stop()


# -- the report -----------------------------------------------------------------------------------


def cpu_us(cpu: CpuMeter, name: str, messages: int) -> float:
    """One process's CPU per message over the phase (µs)."""
    return cpu.seconds.get(name, 0.0) / max(messages, 1) * 1e6


def check(ok: bool) -> str:
    return "yes" if ok else "NO"


def router_line(label: str, run: RouterRun, messages: int) -> str:
    st = run.statuses
    return (
        f"    {label}: {run.rate:,.0f} msg/s; provider sends {run.provider_sends}/{messages}, "
        f"SENT statuses {st.sent_messages}/{messages} ({st.records} records), DLQ {run.dlq}, "
        f"restarts {run.restarts}, {run.seconds:.1f} s\n"
    )


def router_problems(label: str, run: RouterRun, messages: int) -> list[str]:
    """What went wrong with a router run's delivery, if anything: the figures mean nothing then."""
    problems = []
    if run.statuses.sent_messages != messages:
        problems.append(f"{label}: {run.statuses.sent_messages}/{messages} messages SENT")
    if run.provider_sends != messages:
        problems.append(f"{label}: the provider got {run.provider_sends} sends for {messages}")
    if run.dlq or run.restarts:
        problems.append(f"{label}: {run.dlq} dead-lettered, {run.restarts} role restarts")
    return problems


def combined(runs: list[RouterRun]) -> RouterRun:
    """The router's turns of a phase as one run: its messages over its time, summed."""
    seconds = sum(r.seconds for r in runs)
    last = runs[-1]
    return RouterRun(
        rate=sum(r.rate * r.seconds for r in runs) / seconds,
        seconds=seconds,
        provider_sends=sum(r.provider_sends for r in runs),
        statuses=StatusSummary(
            records=sum(r.statuses.records for r in runs),
            sent_messages=sum(r.statuses.sent_messages for r in runs),
            first_ms=runs[0].statuses.first_ms,
            last_ms=last.statuses.last_ms,
        ),
        dlq=last.dlq,  # the topic's, shared by the turns
        restarts=sum(r.restarts for r in runs),
        rss_ready=runs[0].rss_ready,
        rss_mid=max(r.rss_mid for r in runs),
        rss_peak=max(r.rss_peak for r in runs),
        rss_done=last.rss_done,
        cpu=CpuMeter.total([r.cpu for r in runs]),
    )


def turn_tags(phase: str, rounds: int) -> list[str]:
    """The name of each turn of `phase`: "a", "a2", "a3", ..."""
    return [phase if turn == 0 else f"{phase}{turn + 1}" for turn in range(rounds)]


@dataclass
class Turns:
    """A phase's turns: the library floor's rate and CPU, the router's turns as one run, and
    the engine floor's (with --engine-floor)."""

    floor: float
    floor_cpu: CpuMeter
    router: RouterRun
    engine: RouterRun | None


async def turns(
    s: Scratch, phase: str, latency_ms: float, args: argparse.Namespace, max_in_flight: int
) -> Turns:
    """The floor and the router in turns, `args.rounds` each (and the engine floor after the
    router, with --engine-floor)."""
    floor_seconds = 0.0
    floor_cpus: list[CpuMeter] = []
    runs: list[RouterRun] = []
    engines: list[RouterRun] = []
    for tag in turn_tags(phase, args.rounds):
        floor, floor_cpu = await library_floor(s, tag, latency_ms, args.messages, max_in_flight)
        out(f"({tag}) library floor: {floor:,.0f} msg/s\n")
        out(floor_cpu.report(f"({tag}) library floor", args.messages))
        run = await run_router(s, tag, latency_ms, args.messages, args.max_in_flight)
        out(router_line(f"({tag}) router", run, args.messages))
        out(run.cpu.report(f"({tag}) router", args.messages))
        out(f"    ({tag}) router / its floor, this turn: {run.rate / floor:.2f}\n")
        if args.engine_floor:
            engine = await run_router(
                s, f"{tag}e", latency_ms, args.messages, args.max_in_flight, "engine_floor"
            )
            out(router_line(f"({tag}) engine floor", engine, args.messages))
            out(engine.cpu.report(f"({tag}) engine floor", args.messages))
            out(
                f"    ({tag}) engine floor / library floor, this turn: "
                f"{engine.rate / floor:.2f}; router / engine floor: {run.rate / engine.rate:.2f}\n"
            )
            engines.append(engine)
        floor_seconds += args.messages / floor
        floor_cpus.append(floor_cpu)
        runs.append(run)
    floor_rate = args.rounds * args.messages / floor_seconds
    engine_run = combined(engines) if engines else None
    return Turns(floor_rate, CpuMeter.total(floor_cpus), combined(runs), engine_run)


def engine_rows(
    label: str, phase: Turns, total: int, result: dict[str, Any], problems: list[str]
) -> list[tuple[str, str, str, str, str]]:
    """The engine floor's rows of the report (no target: where the router's gap is), its
    figures in `result` and what went wrong with it in `problems`."""
    engine = phase.engine
    if engine is None:
        return []
    problems += router_problems(f"{label} engine floor", engine, total)
    result["engine_floor"] = router_summary(engine)
    return [
        (f"{label} engine floor (its engine, no router logic)", f"{engine.rate:,.0f}",
         f"{engine.rate / phase.floor:.2f}", "", ""),
        (f"{label} router / its engine floor", f"{phase.router.rate:,.0f}",
         f"{phase.router.rate / engine.rate:.2f}", "", ""),
        (f"{label} CPU/message: router/engine/floor (us)",
         f"{cpu_us(phase.router.cpu, 'router', total):.0f}/"
         f"{cpu_us(engine.cpu, 'engine_floor', total):.0f}/"
         f"{cpu_us(phase.floor_cpu, 'bench loop', total):.0f}",
         "", "", ""),
    ]  # fmt: skip


def router_summary(run: RouterRun) -> dict[str, Any]:
    return {
        "rate": run.rate,
        "provider_sends": run.provider_sends,
        "sent_messages": run.statuses.sent_messages,
        "dlq": run.dlq,
        "restarts": run.restarts,
        "rss_peak_mb": run.rss_peak / MB,
        "cpu_s": run.cpu.seconds,
    }


async def bench(args: argparse.Namespace) -> bool:
    """Run the phases, print the figures; False if the router did not deliver every message
    exactly once (then the figures are not worth reading)."""
    defaults = Settings().kafka
    max_in_flight = args.max_in_flight or defaults.max_in_flight
    out(
        f"router benchmark: {args.messages} messages per turn, {args.rounds} turns of the floor "
        f"and the router in (a) and (b), {args.partitions} partitions, "
        f"{args.conversations} conversations, Kafka {KAFKA}, {psutil.cpu_count()} CPUs\n"
        f"router settings: kafka.max_in_flight={max_in_flight}, kafka.fetch_max_records="
        f"{defaults.fetch_max_records}, kafka.linger_ms={defaults.linger_ms}, "
        f"redis.max_connections={Settings().redis.max_connections}, dedup on "
        f"(delivery.dedup_ttl_s={Settings().delivery.dedup_ttl_s}), channels [whatsapp]\n"
    )
    tags = [tag for p in ("a", "b") for tag in turn_tags(p, args.rounds)]
    statuses = [f"status-{tag}" for tag in tags]
    if args.engine_floor:
        statuses += [f"status-{tag}e" for tag in tags]
    async with scratch(args.partitions, ("in", "dlq", "bare", "serial", "floor", *statuses)) as s:
        started = time.perf_counter()
        await produce_messages(s.topic("in"), args.messages, args.conversations)
        out(f"produced {args.messages} messages in {time.perf_counter() - started:.1f} s\n")
        rows: list[tuple[str, str, str, str, str]] = []
        total = args.messages * args.rounds  # the router's and the floor's, over their turns
        problems: list[str] = []
        result: dict[str, Any] = {"messages": args.messages, "rounds": args.rounds}
        if args.only != "b":
            bare, bare_cpu = await bare_loop(s, args.messages)
            out(f"(a) bare loop done: {bare:,.0f} msg/s\n")
            out(bare_cpu.report("(a) bare loop", args.messages))
            a = await turns(s, "a", 0.0, args, max_in_flight)
            floor_a, floor_a_cpu, fast = a.floor, a.floor_cpu, a.router
            ratio_a = fast.rate / floor_a
            problems += router_problems("(a) router", fast, total)
            result["a"] = {"bare": bare, "floor": floor_a, "router": router_summary(fast)}
            rows += [
                ("(a) bare consume+produce loop (no HTTP, no Redis)", f"{bare:,.0f}", "", "", ""),
                ("(a) library floor (same I/O, no router logic)", f"{floor_a:,.0f}", "", "", ""),
                ("(a) router, 0 ms provider / its floor", f"{fast.rate:,.0f}", f"{ratio_a:.2f}",
                 ">= 0.9", check(ratio_a >= 0.9)),
                ("(a) CPU per message: router / floor (us)",
                 f"{cpu_us(fast.cpu, 'router', total):.0f}/"
                 f"{cpu_us(floor_a_cpu, 'bench loop', total):.0f}",
                 "", "", ""),
            ]  # fmt: skip
            rows += engine_rows("(a)", a, total, result["a"], problems)
        if args.only != "a":
            serial, done, serial_cpu = await one_at_a_time(
                s, args.latency_ms, args.baseline_seconds
            )
            out(f"(b) one-at-a-time baseline: {serial:,.0f} msg/s ({done} in "
                f"{args.baseline_seconds:.0f} s)\n")  # fmt: skip
            out(serial_cpu.report("(b) one at a time", done))
            b = await turns(s, "b", args.latency_ms, args, max_in_flight)
            floor, floor_cpu, slow = b.floor, b.floor_cpu, b.router
            ratio_b = slow.rate / floor
            problems += router_problems("(b) router", slow, total)
            result["b"] = {"serial": serial, "floor": floor, "router": router_summary(slow)}
            peak, ready = slow.rss_peak / MB, slow.rss_ready / MB
            rows += [
                (f"(b) one at a time/partition, {args.latency_ms:.0f} ms", f"{serial:,.0f}",
                 "", "", ""),
                ("(b) library floor (same I/O, no router logic)", f"{floor:,.0f}", "", "", ""),
                (f"(b) router, {args.latency_ms:.0f} ms provider / its floor", f"{slow.rate:,.0f}",
                 f"{ratio_b:.2f}", ">= 0.9", check(ratio_b >= 0.9)),
                ("(b) CPU per message: router / floor (us)",
                 f"{cpu_us(slow.cpu, 'router', total):.0f}/"
                 f"{cpu_us(floor_cpu, 'bench loop', total):.0f}",
                 "", "", ""),
                *engine_rows("(b)", b, total, result["b"], problems),
                (f"(c) router RSS peak; ready {ready:.0f}, mid {slow.rss_mid / MB:.0f}, "
                 f"end {slow.rss_done / MB:.0f} MB",
                 f"{peak:.0f} MB", f"+{peak - ready:.0f} MB", "< 250 MB", check(peak < 250)),
            ]  # fmt: skip
        out(f"\n{'':48} {'msg/s':>10} {'ratio':>8} {'target':>9} {'met':>4}\n")
        for label, value, ratio, target, met in rows:
            out(f"{label:48} {value:>10} {ratio:>8} {target:>9} {met:>4}\n")
        for problem in problems:
            out(f"PROBLEM: {problem}\n")
        if not problems:
            out("RESULT: every message sent once and SENT, none dead-lettered\n")
        if args.json:
            result["problems"] = problems
            data = orjson.dumps(result, option=orjson.OPT_INDENT_2)
            await asyncio.to_thread(Path(args.json).write_bytes, data)
        return not problems


# -- at the provider's pace: the real mocks, several routers -------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Spawned:
    proc: asyncio.subprocess.Process
    done: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


async def spawn(doc: dict[str, Any], roles: str) -> Spawned:
    """`bench/router.py --worker` running `roles` until SIGTERM; returned once READY."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--worker", orjson.dumps(doc).decode(),
        "--worker-roles", roles, "--until-stopped", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await read_line(proc, "READY", 90)
    return Spawned(proc)


async def stop_spawned(spawned: Spawned) -> None:
    """SIGTERM (a drain), then its DONE and STATS lines."""
    if spawned.proc.returncode is None:
        spawned.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(RuntimeError, TimeoutError):
            spawned.done = await read_line(spawned.proc, "DONE", 60)
            line = await read_line(spawned.proc, "STATS", 10)
            spawned.stats = orjson.loads(line.removeprefix("STATS "))
    await stop_process(spawned.proc)


def in_order(accepted: list[dict[str, Any]], docs: list[dict[str, Any]]) -> int:
    """Conversations whose accepted texts are out of their produced order."""
    position = {d["payload"]["content"]: n for n, d in enumerate(docs)}
    last: dict[int, int] = {}
    disordered: set[int] = set()
    for a in accepted:
        n = position.get(a["text"])
        if n is None:
            continue
        conversation = docs[n]["conversation_id"]
        if n < last.get(conversation, -1):
            disordered.add(conversation)
        last[conversation] = n
    return len(disordered)


async def until(check: Callable[[], Awaitable[bool]], deadline: float) -> None:
    """Poll another process's state (its HTTP stats) until `check()` or the deadline."""
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)


def rate_between(accepted: list[dict[str, Any]], start: float, end: float) -> float:
    times = [a["accepted_at"] for a in accepted if start <= a["accepted_at"] < end]
    return len(times) / (end - start) if end > start else 0.0


async def paced_bench(args: argparse.Namespace) -> bool:
    """The paced or the pause phase; False if a target was missed."""
    pause = args.phase == "pause"
    channels = ("whatsapp", "instagram") if pause else ("whatsapp",)
    per_channel = args.paced_messages
    total = per_channel * len(channels)
    conversations = args.paced_conversations * len(channels)
    random = (
        f", {args.random_throttle:.0%} of calls answered 429 at random"
        if args.random_throttle is not None
        else ""
    )
    out(
        f"router benchmark, phase {args.phase}: {total} messages ({', '.join(channels)}) over "
        f"{conversations} conversations, {args.routers} router processes in one group, "
        f"mock limit {args.paced_rate:g}/s per account (HTTP 400, code 130429){random}, routers "
        f"pacing at {args.paced_rate:g}/s, {args.partitions} partitions, {psutil.cpu_count()} "
        "CPUs\n"
    )
    names = ("in", "status-paced", "dlq")
    async with scratch(args.partitions, names) as s:
        mock_ports = {"whatsapp_port": free_port(), "instagram_port": free_port()}
        doc = router_settings(s, "paced", f"http://127.0.0.1:{mock_ports['whatsapp_port']}", None)
        doc["whatsapp"] |= {"max_rate_per_s": args.paced_rate, "pair_burst": 45}
        doc["instagram"] = {
            "base_url": f"http://127.0.0.1:{mock_ports['instagram_port']}",
            "access_token": "bench",
            "user_id": "2000",
            "max_rate_per_s": args.paced_rate,
        }
        doc["mocks"] = {
            **mock_ports,
            "whatsapp_rate_per_s": args.paced_rate,
            "instagram_rate_per_s": args.paced_rate,
            "windows": "open",  # the bench's recipients never wrote first
        }
        if args.random_throttle is not None:  # only when asked: a mock without it refuses the key
            doc["mocks"]["random_throttle_rate"] = args.random_throttle
        s.groups.append(router_group(doc))
        wa_url = doc["whatsapp"]["base_url"]
        ig_url = doc["instagram"]["base_url"]
        mocks = await spawn(doc, "whatsapp_mock,instagram_mock")
        routers: list[Spawned] = []
        timeline: dict[str, float] = {}
        try:
            async with aiohttp.ClientSession() as http:

                async def get(url: str, path: str) -> Any:
                    async with http.get(f"{url}{path}") as response:
                        return await response.json()

                async def accepted_total() -> int:
                    counts = [
                        (await get(u, "/__mock__/stats"))["accepted"] for u in (wa_url, ig_url)
                    ]
                    return int(sum(counts))

                async def token(expired: bool) -> None:
                    async with http.post(f"{wa_url}/__mock__/token", json={"expired": expired}):
                        timeline["expired" if expired else "restored"] = time.time()

                # The group settles first (every member assigned), so the run measures the pace,
                # not a rebalance; then the messages arrive.
                routers = list(
                    await asyncio.gather(*(spawn(doc, "router") for _ in range(args.routers)))
                )
                await asyncio.sleep(2 * doc["kafka"].get("session_timeout_ms", 10_000) / 1000 / 3)
                docs = await produce_messages(
                    s.topic("in"), total, conversations, channels=channels
                )
                pids = {f"router-{n + 1}": r.proc.pid for n, r in enumerate(routers)}
                cpu = CpuMeter({**pids, "mocks": mocks.proc.pid, **service_pids()})
                cpu.start()
                deadline = time.monotonic() + total / args.paced_rate * 3 + 120
                if pause:

                    async def a_quarter_sent() -> bool:
                        stats = await get(wa_url, "/__mock__/stats")
                        return bool(stats["accepted"] >= per_channel // 4)

                    await until(a_quarter_sent, deadline)
                    await token(expired=True)
                    await asyncio.sleep(args.pause_s)
                    await token(expired=False)

                async def all_sent() -> bool:
                    return bool(await accepted_total() >= total)

                await until(all_sent, deadline)
                cpu.stop()
                sources = (("whatsapp", wa_url), ("instagram", ig_url))
                accepted = {c: await get(u, "/__mock__/sent") for c, u in sources}
                stats = {c: await get(u, "/__mock__/stats") for c, u in sources}
        finally:
            for router in routers:
                await stop_spawned(router)
            await stop_spawned(mocks)
        statuses = await read_statuses(s.topic("status-paced"), s.partitions)
        dlq = await end_offsets_total(s.topic("dlq"), s.partitions)
    figures: dict[str, Any] = {}
    ok = paced_report(
        args, docs, channels, accepted, stats, statuses, dlq, routers, cpu, timeline, figures
    )
    if args.json:
        await asyncio.to_thread(Path(args.json).write_bytes, orjson.dumps(figures))
    return ok


def paced_report(
    args: argparse.Namespace,
    docs: list[dict[str, Any]],
    channels: tuple[str, ...],
    accepted: dict[str, list[dict[str, Any]]],
    stats: dict[str, dict[str, Any]],
    statuses: StatusSummary,
    dlq: int,
    routers: list[Spawned],
    cpu: CpuMeter,
    timeline: dict[str, float],
    figures: dict[str, Any],
) -> bool:
    """Print the figures and targets (also into `figures`); False if a target was missed."""
    problems: list[str] = []
    total = len(docs)
    out(f"\n{'':44} {'value':>12} {'target':>10} {'met':>4}\n")

    rows: list[dict[str, Any]] = []

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        met = "" if ok is None else check(ok)
        out(f"{label:44} {value:>12} {target:>10} {met:>4}\n")
        rows.append({"label": label, "value": value, "target": target, "met": ok})
        if ok is False:
            problems.append(f"{label}: {value} (target {target})")

    restarts = sum(int(r.done.split()[1]) for r in routers if r.done)
    row("messages SENT (unique, status topic)", f"{statuses.sent_messages}/{total}", "all",
        statuses.sent_messages == total)  # fmt: skip
    row("dead-lettered", str(dlq), "0", dlq == 0)
    row("router restarts", str(restarts), "0", restarts == 0)
    for channel in channels:
        mine = [d for d in docs if channel in d["channels"]]
        got = accepted[channel]
        texts = [a["text"] for a in got]
        st = stats[channel]
        calls = int(st["requests"])
        # The rate's, the pair's and the random throttles (each its own count in the mock).
        throttled = sum(int(count) for name, count in st.items() if name.endswith("throttled"))
        row(f"{channel}: accepted by the mock (once each)", f"{len(set(texts))}/{len(mine)}", "all",
            len(set(texts)) == len(mine) and len(texts) == len(mine))  # fmt: skip
        row(f"{channel}: conversations out of order", str(in_order(got, mine)), "0",
            in_order(got, mine) == 0)  # fmt: skip
        share = f"{throttled}/{calls} {throttled / max(calls, 1):.2%}"
        if args.random_throttle is None:
            row(f"{channel}: throttled answers / calls", share, "<= 1 %", throttled <= 0.01 * calls)
        else:
            row(f"{channel}: throttled answers / calls", share, f"~{args.random_throttle:.0%}")
        times = sorted(a["accepted_at"] for a in got)
        if len(times) > 1:
            rate = (len(times) - 1) / (times[-1] - times[0])
            if args.phase == "paced" and args.random_throttle is not None:
                floor = 0.5 * args.paced_rate
                row(f"{channel}: accepted sends/s, first to last", f"{rate:.1f}/s",
                    f">= {floor:.0f}/s", rate >= floor)  # fmt: skip
                row(f"{channel}: accepted / configured rate", f"{rate / args.paced_rate:.0%}")
            elif args.phase == "paced":
                floor = 0.95 * args.paced_rate
                row(f"{channel}: achieved rate, first to last send", f"{rate:.1f}/s",
                    f">= {floor:.0f}/s", rate >= floor)  # fmt: skip
            else:
                row(f"{channel}: rate, first to last send", f"{rate:.1f}/s")
    if args.phase == "pause":
        expired, restored = timeline["expired"], timeline["restored"]
        ig = accepted["instagram"]
        first_ig = min(a["accepted_at"] for a in ig)
        before = rate_between(ig, first_ig, expired)
        during = rate_between(ig, expired, restored)
        row("instagram: rate before the pause", f"{before:.1f}/s")
        row(
            "instagram: rate while whatsapp paused",
            f"{during:.1f}/s",
            ">= 0.9x",
            during >= 0.9 * before,
        )
        row(
            "whatsapp: rate while paused",
            f"{rate_between(accepted['whatsapp'], expired + 1, restored):.1f}/s",
        )
        for n, router in enumerate(routers):
            requests = router.stats.get("requests", {})
            paused_answers = int(requests.get("whatsapp:paused", 0))
            changes = [
                c for c in router.stats.get("changes", []) if c["account"] == "whatsapp/default"
            ]
            paused = next((c for c in changes if c["state"] == "paused"), None)
            resumed = next((c for c in changes if c["state"] == "active"), None)
            # Probes of the last pause (the final one went through, when it resumed).
            accounts = router.stats.get("accounts", {})
            probes = int(accounts.get("whatsapp/default", {}).get("probes", 0))
            failed_probes = probes - 1 if resumed is not None else probes
            before_hold = paused_answers - failed_probes
            label = f"router-{n + 1}"
            row(f"{label}: account answers (failed probes {failed_probes})", f"{paused_answers}")
            row(f"{label}: failed calls before holding", str(before_hold), "<= 1 + in flight",
                before_hold <= 3)  # fmt: skip
            if len(changes) != 2 or before_hold > 3:
                out(f"    {label} account changes: {changes}\n")
            if paused is None or resumed is None:
                row(f"{label}: paused and resumed", "no", "yes", False)
                continue
            paused_at = datetime.fromisoformat(paused["since"]).timestamp()
            resumed_at = datetime.fromisoformat(resumed["since"]).timestamp()
            row(f"{label}: paused after the token expired", f"{paused_at - expired:.2f} s")
            resumed_s = resumed_at - restored
            row(f"{label}: resumed after the token works", f"{resumed_s:.1f} s", "<= 60 s",
                resumed_s <= 60)  # fmt: skip
    out(cpu.report(f"({args.phase}) routers and mocks", len(docs)))
    for problem in problems:
        out(f"PROBLEM: {problem}\n")
    if not problems:
        out("RESULT: every target met\n")
    figures.update(phase=args.phase, rows=rows, problems=problems)
    return not problems


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="per turn in (a), (b)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of floor and router")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="provider latency in (b)")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--max-in-flight", type=int, help="kafka.max_in_flight for the router")
    parser.add_argument("--only", choices=("a", "b"))
    parser.add_argument(
        "--engine-floor",
        action="store_true",
        help="also run the engine floor in (a) and (b): the router's engine, no router logic",
    )
    parser.add_argument(
        "--phase", choices=("paced", "pause"), help="run this phase alone (against the mocks)"
    )
    parser.add_argument("--paced-messages", type=int, default=5000)
    parser.add_argument("--paced-conversations", type=int, default=500)
    parser.add_argument("--paced-rate", type=float, default=80.0, help="the account's limit /s")
    parser.add_argument("--routers", type=int, default=3, help="router processes, one group")
    parser.add_argument(
        "--random-throttle",
        type=float,
        metavar="SHARE",
        help="the mock answers this share of calls 429 at random (mocks.random_throttle_rate)",
    )
    parser.add_argument("--pause-s", type=float, default=20.0, help="token expired this long")
    parser.add_argument("--json", metavar="PATH", help="also write the figures and counts as JSON")
    parser.add_argument("--worker", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--worker-roles", default="router", help=argparse.SUPPRESS)
    parser.add_argument("--until-stopped", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The collector as `chat4all-workers run` sets it, in the workers and the floors alike.
    collector.tune()
    collector.freeze()
    if args.worker:
        roles: list[str | RoleSpec] = [
            ENGINE_FLOOR if name == "engine_floor" else name
            for name in args.worker_roles.split(",")
        ]
        await worker(orjson.loads(args.worker), roles=roles, drain=not args.until_stopped)
        return 0
    if args.phase:
        return 0 if await paced_bench(args) else 1
    return 0 if await bench(args) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
