"""Pipeline load benchmark: a fixed offered rate through the whole pipeline, end to end.

    python bench/pipeline.py [--rate 200] [--seconds 20] [--conversations 100] [--partitions 12]
                             [--baseline-rate 5] [--baseline-seconds 5] [--drain-timeout 60]
                             [--delivered-after-ms 10] [--read-after-ms 20] [--json PATH]
                             [--keep-logs] [--paced LIMIT]

At the provider's pace (`--paced 80`): the mocks answer as an account limited to LIMIT sends/s
per channel (throttling above it, and WhatsApp's pair limit), the routers pace at LIMIT, and the
load defaults to 80 % of it (`--rate`); the report then gives commit -> SENT and commit -> READ
(p50/p99/max) with the mocks' READ delay subtracted: the pipeline's own latency at a pace a
real account imposes. `--paced 80 --seconds 300 --conversations 400` is the README's figure.

Runs against the real services (the devstack env: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
REDIS_URL, MINIO_*) in a deployment of its own (every topic, a migrated database, a bucket, a
Redis key prefix; removed afterwards): `chat4all-workers run --roles all` in one process and the
two channel mocks in another (harness/processes.deployment_running), the mocks calling the
webhooks role back with signed status webhooks (the production path), production settings but the
mocks' webhook delays, which are set LOW (DELIVERED after --delivered-after-ms, READ after
--read-after-ms from the provider's accept) so that READ latency is the pipeline's, not the
simulated reader's.

Each message is written as the platform's API writes it (harness/pipeline.insert_one, through the
product's own writer behind `chat4all-workers send`: the `messages` row and its `message.created`
outbox event in one transaction), at a FIXED offered rate (open loop: message k is due at
t0 + k/rate, whatever the pipeline does), round-robin across --conversations conversations, each
message to both channels. Its latency runs from the insert's commit to the Redis pub/sub note on
`conversation:{id}` whose `message_status` is READ (the status updater publishes it after
committing `messages.status`; READ is reached when the first channel reports it). Pub/sub is best
effort, so the counts come from the database after a drain: READ, FAILED, and lost (neither,
--drain-timeout after the last insert); the database's own clock (`updated_at - created_at` of
READ rows) is printed as a cross-check, and so is where the time goes: when SENT, DELIVERED and
READ were first reported (the status records' own timestamps, from `message_status_history`),
counted from the insert.

Baseline, in the same run and deployment: first --baseline-rate msg/s for --baseline-seconds
(the latency floor of an idle pipeline), then the load; the report gives load/baseline ratios, and
ratios to the configured floor (the mocks' READ delay). Before both, a warm-up of a few messages
(not counted) lets the consumer groups settle.

Resource use of the worker process (and of the mocks' process) comes from /proc/<pid>, sampled
every 100 ms from a thread: CPU seconds (utime + stime) over the phase's wall time, as % of one
core and per message; RSS at ready, peak and final. Memory of the benchmark itself is bounded:
latencies go into a log-bucketed histogram (1 % resolution), only in-flight messages are kept.
The worker logs' WARNING/ERROR lines are counted and the most frequent ones shown.

It prints numbers and asserts no timing; it exits 1 when a message did not reach READ (lost,
FAILED or dead-lettered), as nothing here injects a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # harness/, shared with the tests, is at the repository root
    sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from harness.deployment import Deployment, isolated_deployment  # noqa: E402
from harness.pipeline import insert_one  # noqa: E402
from harness.processes import WorkerProcess, deployment_running  # noqa: E402
from harness.stack import StackEndpoints  # noqa: E402
from harness.topics import read_topic  # noqa: E402

MB = 1024 * 1024
# Where the services are when the environment does not say (`scripts/devstack env` does).
DEFAULT_ENDPOINTS = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "DATABASE_URL": "postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MINIO_ENDPOINT": "127.0.0.1:9000",
}
WARMUP_MESSAGES = 20
INSERT_CONCURRENCY = 32  # inserts in flight at once; past it the schedule slips (and is reported)
out = sys.stdout.write


# -- measuring -------------------------------------------------------------------------------------


class Histogram:
    """Latencies in log buckets 1 % wide: fixed memory, percentiles within 1 %."""

    _GROWTH = math.log(1.01)

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        self.buckets[int(math.log(max(seconds, 1e-6) * 1e6) / self._GROWTH)] += 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def percentile(self, q: float) -> float:
        """The q-quantile in seconds (the upper edge of its bucket, capped at the maximum)."""
        if not self.count:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(math.exp((index + 1) * self._GROWTH) / 1e6, self.max_s)
        return self.max_s


@dataclass
class ProcSample:
    cpu_s: float
    rss: int


class ProcSampler:
    """CPU seconds and RSS of a process, read from /proc/<pid> every `interval_s` in a thread
    (no file I/O on the event loop); `peak_rss` over the whole run."""

    _TICK_S = 1 / os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_rss = 0

    def read(self) -> ProcSample:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:  # the process is gone
            return ProcSample(math.nan, 0)
        # fields after the command name (which may contain spaces): utime and stime are 14, 15
        fields = stat.rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) * self._TICK_S
        rss = next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
        )
        return ProcSample(cpu_s, rss)

    async def sample(self) -> ProcSample:
        return await asyncio.to_thread(self.read)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.read().rss)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Phase:
    """One offered load: what was inserted, what reached READ (by pub/sub), how fast."""

    name: str
    tag: str  # content prefix, so the database can be asked about this phase alone
    rate: float
    seconds: float
    latency: Histogram = field(default_factory=Histogram)
    pending: dict[str, float] = field(default_factory=dict)  # message_id -> commit time
    inserted: int = 0
    read: int = 0
    failed: int = 0
    behind_s: float = 0.0  # the most an insert started after its due time
    first_insert: float = math.nan
    last_insert: float = math.nan
    last_read: float = math.nan
    inserting: bool = True
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return round(self.rate * self.seconds)

    def check_settled(self) -> None:
        if not self.inserting and not self.pending:
            self.settled.set()


class Tracker:
    """Matches pub/sub notes to inserted messages of the current phase."""

    def __init__(self) -> None:
        self.phase: Phase | None = None
        self.early: dict[str, tuple[str, float]] = {}  # a note that beat its insert's return
        self.notes = 0

    def inserted(self, message_id: str, at: float) -> None:
        phase = self.phase
        assert phase is not None
        phase.inserted += 1
        if math.isnan(phase.first_insert):
            phase.first_insert = at
        phase.last_insert = at
        phase.pending[message_id] = at
        if message_id in self.early:
            self._finish(phase, message_id, *self.early.pop(message_id))

    def note(self, raw: bytes) -> None:
        self.notes += 1
        now = time.monotonic()
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            note = orjson.loads(raw)
            status = note["message_status"]
            if note["type"] != "MessageStatusUpdated" or status not in ("READ", "FAILED"):
                return
            message_id = str(note["message_id"])
            phase = self.phase
            if phase is not None and message_id in phase.pending:
                self._finish(phase, message_id, status, now)
            elif phase is not None and phase.inserting and len(self.early) < 10_000:
                self.early[message_id] = (status, now)

    def _finish(self, phase: Phase, message_id: str, status: str, at: float) -> None:
        started = phase.pending.pop(message_id)
        if status == "READ":
            phase.read += 1
            phase.latency.record(at - started)
            phase.last_read = at
        else:
            phase.failed += 1
        phase.check_settled()


async def listen(stack: StackEndpoints, channels: list[str], tracker: Tracker) -> None:
    client = aioredis.from_url(stack.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*channels)
        async for message in pubsub.listen():
            if message["type"] == "message":
                tracker.note(message["data"])
    finally:
        await pubsub.aclose()
        await client.aclose()


# -- offering the load -----------------------------------------------------------------------------


async def offer(pool: asyncpg.Pool, phase: Phase, tracker: Tracker, conversations: int) -> None:
    """Message k at t0 + k/rate (open loop), each in its own transaction with its event."""
    tracker.phase = phase
    slots = asyncio.Semaphore(INSERT_CONCURRENCY)

    async def insert(n: int) -> None:
        try:
            async with pool.acquire() as conn:
                sent = await insert_one(conn, 1 + n % conversations, f"{phase.tag}{n}")
            tracker.inserted(sent.message_id, time.monotonic())
        finally:
            slots.release()

    t0 = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        for n in range(phase.total):
            due = t0 + n / phase.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await slots.acquire()
            phase.behind_s = max(phase.behind_s, time.monotonic() - due)
            tasks.create_task(insert(n))
    phase.inserting = False
    phase.check_settled()


async def run_phase(
    pool: asyncpg.Pool, phase: Phase, tracker: Tracker, conversations: int, drain_timeout_s: float
) -> None:
    await offer(pool, phase, tracker, conversations)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_timeout_s):
            await phase.settled.wait()


@dataclass
class Usage:
    wall_s: float
    cpu_s: float
    rss_start: int
    rss_end: int


@contextlib.asynccontextmanager
async def usage_of(sampler: ProcSampler, into: list[Usage]) -> AsyncIterator[None]:
    before, t0 = await sampler.sample(), time.monotonic()
    yield
    after = await sampler.sample()
    into.append(Usage(time.monotonic() - t0, after.cpu_s - before.cpu_s, before.rss, after.rss))


# -- the database's view ---------------------------------------------------------------------------


@dataclass
class DbView:
    counts: dict[str, int]
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float
    # status -> (p50, p99, max) of when it was first reported on any channel (the record's own
    # `timestamp`: the router's or the provider's for SENT, the provider's, in the mocks'
    # webhooks, for DELIVERED and READ: whole seconds for WhatsApp, as Meta sends them, so
    # DELIVERED is a lower bound to within a second) - created_at
    stages: dict[str, tuple[float, float, float]] = field(default_factory=dict)


async def db_view(pool: asyncpg.Pool, tag: str) -> DbView:
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM messages WHERE payload->>'content' LIKE $1 "
        "GROUP BY status",
        f"{tag}%",
    )
    lat = await pool.fetchrow(
        """SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY s) AS p,
                  max(s) AS max
           FROM (SELECT extract(epoch FROM updated_at - created_at)::float8 AS s FROM messages
                 WHERE status = 'READ' AND payload->>'content' LIKE $1) t""",
        f"{tag}%",
    )
    stages = await pool.fetch(
        """SELECT f.status,
                  percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY f.s) AS p, max(f.s)
           FROM (SELECT h.status, extract(epoch FROM min(h."timestamp") - m.created_at)::float8 AS s
                 FROM message_status_history h JOIN messages m ON m.id = h.message_id
                 WHERE m.payload->>'content' LIKE $1
                 GROUP BY h.message_id, h.status, m.created_at) f
           GROUP BY f.status""",
        f"{tag}%",
    )
    p50, p90, p99 = lat["p"] or [math.nan] * 3
    return DbView(
        counts={r["status"]: r["n"] for r in rows},
        p50_s=p50,
        p90_s=p90,
        p99_s=p99,
        max_s=lat["max"] or math.nan,
        stages={r["status"]: (r["p"][0], r["p"][1], r["max"]) for r in stages},
    )


async def dead_letters(deployment: Deployment) -> int:
    return len(await read_topic(deployment.stack, deployment.topics["dlq"]))


def log_summary(procs: list[WorkerProcess]) -> tuple[Counter[str], Counter[str]]:
    """(records per level, most frequent WARNING/ERROR messages) over the processes' logs."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for proc in procs:
        for record in proc.log_records():
            level = str(record.get("level", "?"))
            levels[level] += 1
            if level in ("WARNING", "ERROR", "CRITICAL"):
                text = str(record.get("message", ""))[:120]
                messages[f"{proc.roles.split(',')[0]} {level}: {text}"] += 1
    return levels, messages


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Report:
    args: argparse.Namespace
    phases: list[Phase]
    db: list[DbView]
    usage: dict[str, list[Usage]]
    rss_ready: dict[str, int]
    rss_peak: dict[str, int]
    rss_final: dict[str, int]
    dlq: int
    notes: int
    levels: Counter[str]
    messages: Counter[str]
    log_dir: Path

    @property
    def keep_logs(self) -> bool:
        return bool(self.args.keep_logs or self.not_read() or self.levels["ERROR"])

    def lost(self, n: int) -> int:
        counts = self.db[n].counts
        return self.phases[n].inserted - counts.get("READ", 0) - counts.get("FAILED", 0)

    def not_read(self) -> int:
        return sum(p.inserted - self.db[n].counts.get("READ", 0) for n, p in enumerate(self.phases))


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"x{a / b:.2f}"


def print_report(r: Report) -> None:
    a = r.args
    out(
        f"\n{'phase':9} {'offered/s':>9} {'inserted/s':>10} {'READ/s':>8} {'p50 ms':>8} "
        f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'sent':>6} {'read':>6} {'failed':>6} "
        f"{'lost':>5}\n"
    )
    for n, p in enumerate(r.phases):
        span_in = p.last_insert - p.first_insert
        inserted_rate = (p.inserted - 1) / span_in if span_in > 0 else math.nan
        span = p.last_read - p.first_insert
        achieved = p.read / span if span > 0 else math.nan
        h, counts = p.latency, r.db[n].counts
        out(
            f"{p.name:9} {p.rate:9.0f} {inserted_rate:10.1f} {achieved:8.1f} "
            f"{ms(h.percentile(0.5)):>8} {ms(h.percentile(0.9)):>8} {ms(h.percentile(0.99)):>8} "
            f"{ms(h.max_s if h.count else math.nan):>8} {p.inserted:6} {counts.get('READ', 0):6} "
            f"{counts.get('FAILED', 0):6} {r.lost(n):5}\n"
        )
    base, load = r.phases[0].latency, r.phases[-1].latency
    floor = a.read_after_ms / 1000
    qs = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    out(
        "ratio load/baseline:    "
        + "  ".join(f"{q} {ratio(load.percentile(v), base.percentile(v))}" for q, v in qs)
        + f"  max {ratio(load.max_s, base.max_s)}\n"
    )
    out(
        f"ratio to the floor ({a.read_after_ms:.0f} ms, the mocks' READ delay): "
        + "  ".join(
            f"{q} baseline {ratio(base.percentile(v), floor)} load "
            f"{ratio(load.percentile(v), floor)}"
            for q, v in qs
        )
        + "\n"
    )
    for n, p in enumerate(r.phases):
        d = r.db[n]
        out(
            f"database clock ({p.name}, updated_at - created_at of READ rows): p50 {ms(d.p50_s)}"
            f"  p90 {ms(d.p90_s)}  p99 {ms(d.p99_s)}  max {ms(d.max_s)} ms\n"
        )
        stages = "  ".join(
            f"{status} {ms(p50)}/{ms(p99)}/{ms(top)}"
            for status in ("SENT", "DELIVERED", "READ")
            if (stage := d.stages.get(status))
            for p50, p99, top in [stage]
        )
        out(f"  stages ({p.name}, first report - created_at, p50/p99/max ms): {stages}\n")
    sent = sum(p.inserted for p in r.phases)
    by_pubsub = sum(p.read for p in r.phases)
    read = sum(d.counts.get("READ", 0) for d in r.db)
    out(
        f"counts (baseline + load): sent {sent}, READ {read} (by pub/sub {by_pubsub}, "
        f"{read - by_pubsub} notes missed), FAILED {sum(d.counts.get('FAILED', 0) for d in r.db)}"
        f", DLQ records {r.dlq}, lost {sum(r.lost(n) for n in range(len(r.phases)))} "
        f"(drain timeout {a.drain_timeout:.0f} s); pub/sub notes received {r.notes}; "
        f"insert schedule slip max {max(p.behind_s for p in r.phases) * 1000:.1f} ms\n"
    )
    for who, usages in r.usage.items():
        parts = []
        for p, u in zip(r.phases, usages, strict=True):
            per_msg = u.cpu_s / p.inserted * 1000 if p.inserted else math.nan
            parts.append(
                f"{p.name} {u.cpu_s:.1f} CPU s / {u.wall_s:.1f} s = "
                f"{u.cpu_s / u.wall_s * 100:.0f}% of a core, {per_msg:.2f} ms/msg"
            )
        per = [u.cpu_s / p.inserted for p, u in zip(r.phases, usages, strict=True) if p.inserted]
        out(
            f"{who}: "
            + "; ".join(parts)
            + f"; CPU/msg load/baseline {ratio(per[-1], per[0]) if len(per) > 1 else '-'}"
            f"; RSS ready {r.rss_ready[who] / MB:.0f} MB, peak {r.rss_peak[who] / MB:.0f} MB, "
            f"final {r.rss_final[who] / MB:.0f} MB\n"
        )
    own = resource.getrusage(resource.RUSAGE_SELF)
    out(
        f"this benchmark's own process (inserts, pub/sub, same machine): "
        f"{own.ru_utime + own.ru_stime:.1f} CPU s in all\n"
    )
    if a.paced:
        print_paced(r)
    levels = ", ".join(f"{k} {v}" for k, v in sorted(r.levels.items()))
    kept = f"kept in {r.log_dir}" if r.keep_logs else "deleted; --keep-logs keeps them"
    out(f"worker logs: {levels or 'empty'} ({kept})\n")
    for text, count in r.messages.most_common(8):
        out(f"  {count:6}x {text}\n")
    not_read = r.not_read()
    out("RESULT: every message READ\n" if not not_read else f"RESULT: {not_read} NOT READ\n")


def print_paced(r: Report) -> None:
    """The load phase at the provider's pace: commit -> SENT and commit -> READ, the mocks'
    READ delay subtracted (the pipeline's own latency)."""
    a = r.args
    phase, view = r.phases[-1], r.db[-1]
    sent = view.stages.get("SENT")
    delay_s = a.read_after_ms / 1000
    read = phase.latency
    out(
        f"at the provider's pace ({a.paced:g}/s per account, offered {phase.rate:g}/s = "
        f"{phase.rate / a.paced:.0%}): commit -> SENT "
        + (f"p50 {ms(sent[0])} p99 {ms(sent[1])} max {ms(sent[2])} ms" if sent else "-")
        + f"; commit -> READ less the mocks' READ delay ({a.read_after_ms:.0f} ms) p50 "
        f"{ms(read.percentile(0.5) - delay_s)} p99 {ms(read.percentile(0.99) - delay_s)} "
        f"max {ms(read.max_s - delay_s)} ms\n"
    )


def as_json(r: Report) -> dict[str, Any]:
    return {
        "phases": [
            {
                "name": p.name,
                "offered_per_s": p.rate,
                "seconds": p.seconds,
                "sent": p.inserted,
                "read_by_pubsub": p.read,
                "read": r.db[n].counts.get("READ", 0),
                "failed": r.db[n].counts.get("FAILED", 0),
                "lost": r.lost(n),
                "p50_ms": p.latency.percentile(0.5) * 1000,
                "p99_ms": p.latency.percentile(0.99) * 1000,
                "max_ms": p.latency.max_s * 1000,
            }
            for n, p in enumerate(r.phases)
        ],
        "dlq": r.dlq,
        "not_read": r.not_read(),
        "log_levels": dict(r.levels),
    }


async def bench(args: argparse.Namespace) -> int:
    stack = StackEndpoints.from_environ({**DEFAULT_ENDPOINTS, **os.environ})
    mocks: dict[str, Any] = {
        "delivered_after_ms": args.delivered_after_ms,
        "read_after_ms": args.read_after_ms,
    }
    sections: dict[str, dict[str, Any]] = {"mocks": mocks}
    if args.paced:
        mocks |= {"whatsapp_rate_per_s": args.paced, "instagram_rate_per_s": args.paced}
        sections["whatsapp"] = {"max_rate_per_s": args.paced}
        sections["instagram"] = {"max_rate_per_s": args.paced}
        if args.rate is None:
            args.rate = 0.8 * args.paced
    elif args.rate is None:
        args.rate = 200.0
    out(
        f"pipeline benchmark: `run --roles all` + the two channel mocks (2 processes), "
        f"{args.partitions} partitions, {args.conversations} conversations, 2 channels per "
        f"message, Kafka {stack.kafka_bootstrap}, {os.cpu_count()} CPUs\n"
        f"settings: production defaults, except the mocks: latency 0 ms, DELIVERED after "
        f"{args.delivered_after_ms:.0f} ms, READ after {args.read_after_ms:.0f} ms (LOW, so "
        f"READ latency is the pipeline's)\n"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    phases = [
        Phase("baseline", "b", args.baseline_rate, args.baseline_seconds),
        Phase("load", "m", args.rate, args.seconds),
    ]
    tracker = Tracker()
    usage: dict[str, list[Usage]] = {"worker": [], "mocks": []}
    async with (
        isolated_deployment(stack, partitions=args.partitions, label="bench-pipeline") as dep,
        deployment_running(dep, log_dir, **sections) as procs,
        asyncpg.create_pool(dep.database_url, min_size=4, max_size=16) as pool,
        asyncio.TaskGroup() as tasks,
    ):
        samplers = {
            who: ProcSampler(proc.proc.pid)
            for who, proc in zip(usage, procs, strict=True)
            if proc.proc is not None
        }
        with samplers["worker"], samplers["mocks"]:
            rss_ready = {who: (await s.sample()).rss for who, s in samplers.items()}
            channels = [
                f"{dep.redis_prefix}conversation:{c}" for c in range(1, args.conversations + 1)
            ]
            listener = tasks.create_task(listen(stack, channels, tracker))
            await asyncio.sleep(0.5)  # the SUBSCRIBE goes out before the first note can
            warmup = Phase("warm-up", "w", 20.0, WARMUP_MESSAGES / 20)
            await run_phase(pool, warmup, tracker, args.conversations, args.drain_timeout)
            out(f"warm-up: {warmup.read}/{warmup.inserted} READ\n")
            for phase in phases:
                async with (
                    usage_of(samplers["worker"], usage["worker"]),
                    usage_of(samplers["mocks"], usage["mocks"]),
                ):
                    await run_phase(pool, phase, tracker, args.conversations, args.drain_timeout)
                out(f"{phase.name}: {phase.read}/{phase.inserted} READ by pub/sub\n")
            rss_final = {who: (await s.sample()).rss for who, s in samplers.items()}
        listener.cancel()
        db = [await db_view(pool, p.tag) for p in phases]
        dlq = await dead_letters(dep)
    # the processes are stopped: their logs are complete
    levels, messages = await asyncio.to_thread(log_summary, procs)
    report = Report(
        args,
        phases,
        db,
        usage,
        rss_ready,
        {w: s.peak_rss for w, s in samplers.items()},
        rss_final,
        dlq,
        tracker.notes,
        levels,
        messages,
        log_dir,
    )
    print_report(report)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_bytes, orjson.dumps(as_json(report)))
    if not report.keep_logs:
        await asyncio.to_thread(shutil.rmtree, log_dir)
    return 1 if report.not_read() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=float, help="offered messages/s (load; default 200, or 80 %% of --paced)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--baseline-rate", type=float, default=5.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--delivered-after-ms", type=float, default=10.0)
    parser.add_argument("--read-after-ms", type=float, default=20.0)
    parser.add_argument("--json", metavar="PATH", help="also write the counts as JSON")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the worker logs (kept anyway on trouble)"
    )
    parser.add_argument(
        "--paced",
        type=float,
        metavar="LIMIT",
        help="the mocks limit each channel's account to LIMIT sends/s and the routers pace at it",
    )
    return asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
