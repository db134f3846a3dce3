"""A broker failover under the whole pipeline, on a 3-node Kafka cluster of the test's own.

Messages are written as the platform's API writes them (the `messages` row and its outbox event
in one transaction) at a steady rate through `chat4all-workers run --roles all` and the channel
mocks (a process of their own), every topic replicated 3 with `min.insync.replicas` 2
(`topics ensure` with `kafka.replication_factor = 3`). Mid-stream, the node that is the router
group's coordinator, and so (fresh topics on three live nodes spread the leaders evenly) also
leads partitions of `message_processing`, is killed with SIGKILL. The stream goes on, and the node
stays down until every message so far is READ: the cluster has to carry on with two nodes, and
nothing may wait for the dead one to come back. Then it comes back, as an operator brings it
back, and a preferred leader election (what `auto.leader.rebalance.enable` does within five
minutes) hands its partitions and its groups back to it while a last stretch of the stream runs.

Then, over the whole run: every message READ, none lost or dead-lettered, no (message, channel)
sent twice, per-conversation order kept at the mocks, every outbox event published once and in
order with no attempt spent, nothing left in the Redis fallback list, no role restarted, nothing
logged above WARNING (process start to exit). The summary line gives the stall of the failover
and of the return (the longest time without progress at each stage), and what was logged at
WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from chat4all_workers.db.migrate import migrate
from chat4all_workers.kafka.admin import ensure_topics
from harness.deployment import TOPIC_FIELDS, Deployment
from harness.pipeline import Sent, insert_one
from harness.processes import WorkerProcess, workers_running
from harness.stack import StackEndpoints, unique_name
from harness.topics import read_topic
from harness.waiting import eventually
from tests.cluster import Cluster, describe_without, leaders
from tests.e2e.pipeline import check_deliveries, mock_sent

# The stream (`make soak` raises them): RATE_PER_S messages a second for SECONDS, each to both
# channels, the kill KILL_AFTER_S into it; over as many conversations as keep each recipient
# within WhatsApp's pair limit (a burst of 45, then one per 6 s: the mocks enforce it), else
# the stream would measure the pair limit, not the failover.
RATE_PER_S = int(os.environ.get("FAILOVER_RATE_PER_S", "20"))
SECONDS = float(os.environ.get("FAILOVER_SECONDS", "16"))
KILL_AFTER_S = float(os.environ.get("FAILOVER_KILL_AFTER_S", "5"))
RETURN_SECONDS = 3.0  # the stream once the node is back; the election 1 s into it
PER_RECIPIENT = 40
CONVERSATIONS = range(1, 1 + math.ceil(RATE_PER_S * (SECONDS + RETURN_SECONDS) / PER_RECIPIENT))
# Processes running `--roles all` (each role's group then has that many members), plus one for
# the mocks.
WORKERS = int(os.environ.get("FAILOVER_WORKERS", "1"))
TIMEOUT_S = float(os.environ.get("FAILOVER_TIMEOUT_S", "240"))
PARTITIONS = 6  # of every topic: two led by each node

pytestmark = [
    pytest.mark.stack,
    pytest.mark.cluster,
    pytest.mark.failover,
    pytest.mark.timeout(TIMEOUT_S),
]

# Production's Kafka settings (breaker, timeouts: the checked-in defaults); only what makes the
# pipeline's own pace a test's: mocks that report at once, backfill polling every second.
SETTINGS: dict[str, dict[str, Any]] = {
    "mocks": {"delivered_after_ms": 50.0, "read_after_ms": 100.0},
    "fallback": {"poll_interval_s": 1.0},
    "supervisor": {"shutdown_timeout_s": 10.0},
}


@pytest.fixture
async def cluster_deployment(
    stack: StackEndpoints, cluster: Cluster, pg_database: str, redis_prefix: str, s3_bucket: str
) -> Deployment:
    """A whole deployment (harness/deployment.Deployment) whose Kafka is the cluster: every topic
    created by `ensure_topics`, what `topics ensure` runs, replicated 3."""
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    deployment = Deployment(
        stack=dataclasses.replace(stack, kafka_bootstrap=cluster.bootstrap),
        database_url=pg_database,
        redis_prefix=redis_prefix,
        bucket=s3_bucket,
        group=unique_name("group"),
        topics={name: unique_name(name.replace("_", "-")) for name in TOPIC_FIELDS},
    )
    created, _ = await ensure_topics(
        deployment.settings(kafka={"replication_factor": 3, "default_partitions": PARTITIONS})
    )
    assert sorted(created) == sorted(deployment.topics.values())
    return deployment


@dataclass(frozen=True)
class Written(Sent):
    at: float  # time.time() of the commit


async def stream(deployment: Deployment, *, seconds: float, tag: str) -> list[Written]:
    """RATE_PER_S messages a second, round-robin over the conversations, for `seconds`; each
    content unique (`tag`), as the mocks tell sends apart by it."""
    written: list[Written] = []
    conn = await asyncpg.connect(deployment.database_url)
    try:
        start = time.monotonic()
        for n in range(int(seconds * RATE_PER_S)):
            conversation = CONVERSATIONS[n % len(CONVERSATIONS)]
            sent = await insert_one(conn, conversation, f"{tag}{conversation}-{n}")
            written.append(Written(**dataclasses.asdict(sent), at=time.time()))
            # On a schedule, not a sleep after each: a slow insert does not slow the stream.
            await asyncio.sleep(max(0.0, start + (n + 1) / RATE_PER_S - time.monotonic()))
    finally:
        await conn.close()
    return written


@dataclass(frozen=True)
class Victim:
    node: int
    led: tuple[int, ...]  # partitions of message_processing it leads
    coordinates: tuple[str, ...]  # the roles whose group it coordinates


async def choose_victim(cluster: Cluster, deployment: Deployment) -> Victim:
    """The router group's coordinator, and the `message_processing` partitions it leads."""
    settings = deployment.settings()
    topic = settings.topics.message_processing
    coordinators = {}
    for role in ("router", "status_updater"):
        described, coordinators[role] = await describe_without(
            cluster, None, topic, settings.kafka.group_for(role)
        )
    node = coordinators["router"]
    led = tuple(p for p, leader in sorted(leaders(described).items()) if leader == node)
    return Victim(node, led, tuple(r for r, c in coordinators.items() if c == node))


def longest_gap_s(times: Sequence[float], *, since: float, until: float = math.inf) -> float:
    """The longest time without an event, from `since` to the last event before `until`."""
    window = sorted(t for t in times if since <= t < until)
    if not window:
        return math.inf
    return max(b - a for a, b in zip([since, *window], window, strict=False))


@dataclass
class Timeline:
    """When the faults happened (time.time(), the clock the mocks and PostgreSQL share)."""

    killed: float = math.inf
    back: float = math.inf  # the node started again
    elected: float = math.inf  # the preferred leader election began


async def node_in_sync(cluster: Cluster, node: int) -> bool:
    """True once `node` is in the in-sync replicas of every partition of every topic (a
    preferred election fails for a partition whose preferred leader is not)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return all(node in p["isr"] for t in described for p in t["partitions"])


async def every_read(deployment: Deployment, written: Sequence[Written]) -> None:
    """Until every message written is READ (90 s at most: the figures say what is missing)."""

    async def all_read() -> bool:
        return {w.message_id for w in written} <= (await read_times(deployment)).keys()

    with contextlib.suppress(AssertionError):
        await eventually(all_read, timeout_s=90, interval_s=0.5, message="every READ")


@dataclass(frozen=True)
class Figures:
    messages: int
    read: int
    dead_lettered: int
    sent: dict[str, int]
    duplicates: dict[str, int]
    out_of_order: dict[str, int]
    published: int
    published_twice: int
    aggregates_out_of_order: int
    outbox_unpublished: int
    outbox_attempts: int
    backfilled: float  # records parked in Redis (breaker open) and moved to Kafka by backfill
    fallback_left: int
    restarts: float
    stall_s: dict[str, float]  # "<fault> <stage>" -> longest time without progress
    latency_s: dict[str, float]  # message written -> READ: p50 before the kill, max after
    # Where the time goes before the kill, p50: written -> published (outbox), -> accepted by
    # both mocks (router), -> READ (mocks' reports, status updater).
    stages_p50_s: dict[str, float]

    def line(self, victim: Victim, logs: Logs) -> str:
        stalls = " ".join(f"{k}={v:.1f}s" for k, v in self.stall_s.items())
        latency = " ".join(f"{k}={v:.1f}s" for k, v in self.latency_s.items())
        latency += " (p50 before: " + " ".join(
            f"{k}={v:.2f}s" for k, v in self.stages_p50_s.items()
        )
        latency += ")"
        warned = "; ".join(f"{n}x {m}" for m, n in logs.warnings.most_common())
        return (
            f"broker failover (kafka-{victim.node}: leads message_processing {list(victim.led)}, "
            f"coordinates {', '.join(victim.coordinates)}): messages={self.messages} "
            f"read={self.read} dlq={self.dead_lettered} sent={self.sent} "
            f"duplicates={self.duplicates} out_of_order={self.out_of_order} "
            f"published={self.published} published_twice={self.published_twice} "
            f"outbox_attempts={self.outbox_attempts} backfilled={self.backfilled:g} "
            f"restarts={self.restarts:g} errors={len(logs.errors)} stall: {stalls} "
            f"latency: {latency}; warnings: {warned or 'none'}"
        )


async def read_times(deployment: Deployment) -> dict[str, float]:
    """message id -> when it reached READ (its row's last update)."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, extract(epoch FROM updated_at)::float8 AS at FROM messages "
            "WHERE status = 'READ'"
        )
    finally:
        await conn.close()
    return {r["id"]: r["at"] for r in rows}


async def metric_sum(proc: WorkerProcess, name: str, labels: str = "") -> float:
    """The sum of a metric's samples on the process's /metrics, those whose labels contain
    `labels` (e.g. `role="backfill"`)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as response,
    ):
        text = await response.text()
    samples = re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)
    return sum(float(value) for found, value in samples if labels in found)


async def outbox_left(deployment: Deployment) -> tuple[int, int]:
    """(events not published, attempts spent) in the outbox."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE published_at IS NULL) AS left, "
            "coalesce(sum(attempts), 0) AS attempts FROM outbox_events"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["left"]), int(row["attempts"])


async def fallback_left(deployment: Deployment) -> int:
    """Items still in the Redis fallback list, or in its dead list."""
    queue = deployment.redis_prefix + deployment.settings().fallback.queue_key
    client = aioredis.from_url(deployment.stack.redis_url)
    try:
        return int(await client.llen(queue)) + int(await client.llen(f"{queue}:dead"))
    finally:
        await client.aclose()


def _shape(message: str) -> str:
    """A log message without its numbers and ids, to count lines alike."""
    return re.sub(r"\d+(\.\d+)?", "N", message)[:120]


async def gather(
    deployment: Deployment, procs: list[WorkerProcess], written: list[Written], at: Timeline
) -> Figures:
    ids = {w.message_id for w in written}
    reads = await read_times(deployment)
    dead = {
        str(orjson.loads(r.value)["message_id"])
        for r in await read_topic(deployment.stack, deployment.topics["dlq"])
        if r.value
    }
    sent, duplicates, disordered, accepted_at = {}, {}, {}, []
    delivered: dict[str, float] = {}  # content -> when the last channel accepted it
    for channel in ("whatsapp", "instagram"):
        accepted = await mock_sent(deployment, channel)
        duplicates[channel], disordered[channel] = check_deliveries(list(written), accepted)
        sent[channel] = len(accepted)
        accepted_at += [a["accepted_at"] for a in accepted]
        for a in accepted:
            delivered[a["text"]] = max(delivered.get(a["text"], 0.0), a["accepted_at"])
    published = await read_topic(deployment.stack, deployment.topics["message_processing"])
    published_at: dict[str, float] = {
        orjson.loads(r.value)["payload"]["content"]: r.timestamp / 1000 for r in published
    }
    event_ids = [dict(r.headers)["event_id"] for r in published]
    contents: dict[bytes | None, list[str]] = {}
    for r in published:
        contents.setdefault(r.key, []).append(orjson.loads(r.value)["payload"]["content"])
    order = {w.content: n for n, w in enumerate(written)}
    unpublished, attempts = await outbox_left(deployment)
    stages = {
        "published": [r.timestamp / 1000 for r in published],
        "sent": accepted_at,
        "read": list(reads.values()),
    }
    stall_s = {
        f"failover {k}": longest_gap_s(t, since=at.killed, until=at.back) for k, t in stages.items()
    }
    stall_s |= {f"return {k}": longest_gap_s(t, since=at.elected) for k, t in stages.items()}

    def latencies(since: float, until: float) -> list[float]:
        return [reads.get(w.message_id, math.inf) - w.at for w in written if since <= w.at < until]

    def p50(frm: Callable[[Written], float], to: Callable[[Written], float]) -> float:
        return statistics.median(to(w) - frm(w) for w in written if w.at < at.killed)

    def published_of(w: Written) -> float:
        return published_at.get(w.content, math.inf)

    def accepted_of(w: Written) -> float:
        return delivered.get(w.content, math.inf)

    def read_of(w: Written) -> float:
        return reads.get(w.message_id, math.inf)

    return Figures(
        messages=len(ids),
        read=len(ids & reads.keys()),
        dead_lettered=len(ids & dead),
        sent=sent,
        duplicates=duplicates,
        out_of_order=disordered,
        published=len(event_ids),
        published_twice=len(event_ids) - len(set(event_ids)),
        aggregates_out_of_order=sum(
            1 for c in contents.values() if [order[x] for x in c] != sorted(order[x] for x in c)
        ),
        outbox_unpublished=unpublished,
        outbox_attempts=attempts,
        backfilled=sum(
            [await metric_sum(p, "messages_processed_total", 'role="backfill"') for p in procs]
        ),
        fallback_left=await fallback_left(deployment),
        restarts=sum([await metric_sum(p, "supervisor_restarts_total") for p in procs]),
        stall_s=stall_s,
        latency_s={
            "p50_before": statistics.median(latencies(0, at.killed)),
            "max_failover": max(latencies(at.killed, at.back), default=math.nan),
            "max_return": max(latencies(at.back, math.inf), default=math.nan),
        },
        stages_p50_s={
            "publish": p50(lambda w: w.at, published_of),
            "send": p50(published_of, accepted_of),
            "read": p50(accepted_of, read_of),
        },
    )


@dataclass(frozen=True)
class Logs:
    errors: list[str]  # ERROR and CRITICAL lines
    warnings: Counter[str]  # WARNING lines, alike ones counted together

    @classmethod
    def of(cls, procs: Sequence[WorkerProcess]) -> Logs:
        records = [r for proc in procs for r in proc.log_records()]
        return cls(
            errors=[r["message"] for r in records if r.get("level") in ("ERROR", "CRITICAL")],
            warnings=Counter(_shape(r["message"]) for r in records if r.get("level") == "WARNING"),
        )


async def test_killing_the_router_coordinator_and_leader_mid_stream_loses_nothing(
    cluster_deployment: Deployment,
    cluster: Cluster,
    tmp_path: Path,
    record_summary: Callable[[str], None],
) -> None:
    deployment = cluster_deployment
    router_group = deployment.settings().kafka.group_for("router")
    victim = await choose_victim(cluster, deployment)
    assert victim.led, f"kafka-{victim.node} leads no partition of message_processing"
    at = Timeline()
    groups = ["all"] * WORKERS + ["whatsapp_mock,instagram_mock"]
    async with workers_running(deployment, tmp_path, groups, **SETTINGS) as procs:
        written = await stream(deployment, seconds=KILL_AFTER_S, tag="before")
        at.killed = time.time()
        await cluster.adevstack("stop", "--kill", f"kafka-{victim.node}")
        written += await stream(deployment, seconds=SECONDS - KILL_AFTER_S, tag="failover")
        await every_read(deployment, written)
        topic = deployment.topics["message_processing"]
        during, coordinator = await describe_without(cluster, victim.node, topic, router_group)

        at.back = time.time()
        await cluster.adevstack("start", f"kafka-{victim.node}")
        await eventually(lambda: node_in_sync(cluster, victim.node), message="back in sync")
        async with asyncio.TaskGroup() as tasks:
            tail = tasks.create_task(stream(deployment, seconds=RETURN_SECONDS, tag="return"))
            await asyncio.sleep(1.0)  # a schedule: the election in the middle of the stream
            at.elected = time.time()
            await cluster.adevstack(
                "kafka-leader-election", "--election-type", "PREFERRED", "--all-topic-partitions"
            )
        written += tail.result()
        await every_read(deployment, written)
        alive = [proc.proc is not None and proc.proc.returncode is None for proc in procs]
        figures = await gather(deployment, procs, written, at)
    logs = Logs.of(procs)  # from start to exit
    record_summary(figures.line(victim, logs))

    assert coordinator != victim.node
    assert victim.node not in leaders(during).values()
    assert figures.read == figures.messages == len(written)
    assert figures.dead_lettered == 0
    assert figures.sent == {"whatsapp": len(written), "instagram": len(written)}
    assert figures.duplicates == {"whatsapp": 0, "instagram": 0}
    assert figures.out_of_order == {"whatsapp": 0, "instagram": 0}
    assert figures.published == len(written)
    assert figures.published_twice == 0
    assert figures.aggregates_out_of_order == 0
    assert figures.outbox_unpublished == 0
    assert figures.outbox_attempts == 0
    assert figures.fallback_left == 0
    assert all(alive)
    assert figures.restarts == 0
    assert logs.errors == []
