"""Webhooks benchmark: signed status webhooks per second on one worker process and its CPU per
status, next to the leanest server doing the same work (the floor) and to the router's CPU per
message, all measured in the same run.

    python bench/webhooks.py [--webhooks 20000] [--rounds 3] [--batch 10]
                             [--connections 32,64] [--router-messages 20000]
                             [--partitions 12] [--json PATH] [--profile DIR]

Runs against the real services (the devstack env: KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, ...).

(r) the router: bench/router.py's phase (a) as it is (its own subprocess, the fake provider
    answering at once, --router-messages messages); its msg/s and CPU per message.
(1) one status per POST, as Meta mostly sends them: --webhooks signed WhatsApp `delivered`
    notifications (each about 900 bytes, with Meta's `conversation` and `pricing` objects) for
    distinct messages, from a load generator holding N keep-alive connections, each sending its
    next request when the last was answered (closed loop); once per N of --connections.
(2) the same statuses --batch per POST (Meta batches under load), over the first N.

Each phase runs against the webhooks role and against the floor (bench/webhook_floor.py: the
signature, the JSON parse, one Redis verdict and one Kafka record acknowledged per status, on an
httptools/asyncio server with nothing else), each its own subprocess, both started for the phase:
the role is a real `App(roles=["webhooks"])` (`--worker`) producing to a topic of its own. The
load goes to them in turns, --rounds times each (floor, role, floor, role, ...), --webhooks
statuses a turn, and each server's figures are the sums over its turns. Why turns: this machine's
speed drifts by tens of percent from one minute to the next (the floor's CPU per status ranged
73-132 us over four one-turn runs of the same tree, 2026-12-06), and a floor measured a minute
before the role made a ratio of that drift; turns of a few seconds see the same machine. The
ratio of each turn is printed too. The load generator is its own subprocess per turn
(`--client`: raw HTTP/1.1 over asyncio with pre-signed requests and httptools parsing, so it costs
as little CPU as it can). Throughput is statuses acknowledged (200) per second of the generator's
wall clock, summed over the turns; ack latency is each request's time from write to complete
answer (p50 and p99 over every turn's requests).
Every status must come back as one `message_status_updates` record (checked by reading the
topic), or the run reports a problem. `--profile DIR` samples each server's phases with py-spy
(raw collapsed stacks, one file per phase; the profiled figures are then not comparable).

On this machine the servers, the generator, Kafka and Redis share the cores, so rates are bounded
by the machine; CPU per status of each process says where the time goes. The targets are ratios
to figures of the same run, which survive a busy machine, for one status per POST at each N:
- CPU per status at most 1.5x the floor's: the role's own work (routing, limits, accounting,
  the provider's word with its bookkeeping, metrics) costs at most half of what the work itself
  costs on these libraries;
- ack p99 under 100 ms;
- at least half the floor's statuses/s.
The role's CPU per status against the router's per message is printed beside them, with no
target: issue 22 asked for a third (Meta sends about three statuses per message), but the floor
alone, one HTTP answer, one Redis script and one acknowledged Kafka record per status, costs
0.4-0.6 of the router's per message on this machine, so no server of this work can reach it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chat4all_workers import collector
from chat4all_workers.kafka.admin import wait_for_leaders
from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from chat4all_workers.roles import load_settings

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.procs import CpuMeter, RssSampler, read_line, service_pids, stop_process  # noqa: E402
from bench.router import (  # noqa: E402
    KAFKA,
    REDIS,
    RouterRun,
    Scratch,
    produce_messages,
    run_router,
    scratch,
)
from harness.deployment import free_port  # noqa: E402

SECRET = "bench-app-secret"
_DONE_LINE_LIMIT = 64 * 2**20  # the generator's DONE line carries every request's latency
PHONE = "1000"
out = sys.stdout.write


# -- the webhooks worker subprocess ---------------------------------------------------------------


async def worker(doc: dict[str, Any]) -> None:
    from chat4all_workers.app import App
    from chat4all_workers.observability.logging import configure_logging
    from chat4all_workers.observability.tracing import configure_tracing

    settings = load_settings({}, doc)
    configure_logging(level="WARNING", service="supervisor")
    configure_tracing(service_name="bench-webhooks", otlp_endpoint="")
    async with App(settings, roles=["webhooks"], serve_http=False) as sup:
        collector.freeze()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, sup.request_stop)
        await sup.wait_ready(timeout_s=60)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await sup.wait()


# -- the load generator subprocess ----------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive connection: write a request, wait for the whole answer, write the next."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._next()

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        self._client.answered(self._parser.get_status_code(), time.perf_counter() - self._sent_at)
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.lost(exc)

    def _next(self) -> None:
        request = self._client.take()
        assert self._transport is not None
        if request is None:
            self._transport.close()
            return
        self._sent_at = time.perf_counter()
        self._transport.write(request)


class _Client:
    """Hands out the requests in order; the first `warmup` answers are not in the figures (the
    worker's first produce to a topic waits for its metadata: a one-off stall of ~0.25 s)."""

    def __init__(self, requests: list[bytes], connections: int, warmup: int) -> None:
        self._requests = requests
        self._next_index = 0
        self._open = connections
        self._warmup = warmup
        self.started = 0.0
        self.codes: Counter[int] = Counter()
        self.latencies: list[float] = []
        self.done = asyncio.get_running_loop().create_future()

    def take(self) -> bytes | None:
        if self._next_index >= len(self._requests):
            return None
        request = self._requests[self._next_index]
        self._next_index += 1
        return request

    def answered(self, code: int, latency_s: float) -> None:
        self.codes[code] += 1
        if self._warmup:
            self._warmup -= 1
            self.started = time.perf_counter()
        else:
            self.latencies.append(latency_s)

    def lost(self, exc: Exception | None) -> None:
        self._open -= 1
        if exc is not None and not self.done.done():
            self.done.set_exception(exc)
        elif self._open == 0 and not self.done.done():
            self.done.set_result(None)


def requests_for(host: str, bodies: list[bytes]) -> list[bytes]:
    head = f"POST /webhooks/whatsapp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    return [
        (
            f"{head}{SIGNATURE_HEADER}: {sign(SECRET, body)}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def client(doc: dict[str, Any]) -> None:
    """Build the signed requests, say READY, wait for a line on stdin, run, print the figures."""
    bodies = notification_bodies(doc["webhooks"], doc["batch"], doc["seed"])
    requests = requests_for(f"127.0.0.1:{doc['port']}", bodies)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await reader.readline()
    state = _Client(requests, doc["connections"], warmup=doc["warmup"])
    for _ in range(doc["connections"]):
        await loop.create_connection(lambda: _Connection(state), "127.0.0.1", doc["port"])
    await state.done
    elapsed = time.perf_counter() - state.started
    result = {
        "warmup": doc["warmup"],
        "codes": {str(k): v for k, v in state.codes.items()},
        "seconds": elapsed,
        "latencies_ms": [round(s * 1000, 3) for s in state.latencies],
    }
    sys.stdout.write("DONE " + orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


def notification_bodies(count: int, batch: int, seed: int) -> list[bytes]:
    """`count` delivered statuses for distinct messages, `batch` per notification, shaped like
    Meta's (with the `conversation` and `pricing` objects a status carries)."""
    rng = random.Random(seed)
    bodies = []
    now = int(time.time())
    for start in range(0, count, batch):
        statuses = []
        for n in range(start, min(count, start + batch)):
            message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            callback = orjson.dumps({"message_id": message_id, "conversation_id": n % 2000})
            item = whatsapp_status(
                f"wamid.HBgNNTUxMTk5OTk5MDAwMBUCABEYEjk{n:020d}A==",
                "delivered",
                at_s=now,
                recipient_id=f"55{n % 2000:011d}",
                callback_data=callback.decode(),
            )
            item["conversation"] = {
                "id": f"{rng.getrandbits(128):032x}",
                "origin": {"type": "service"},
            }
            item["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "service"}
            statuses.append(item)
        bodies.append(orjson.dumps(whatsapp_notification(phone_number_id=PHONE, statuses=statuses)))
    return bodies


# -- processes and topics -------------------------------------------------------------------------


async def create_topics(s: Scratch, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(s.topic(n), num_partitions=s.partitions, replication_factor=1) for n in names]
        )
        await wait_for_leaders(admin, {s.topic(n): s.partitions for n in names})
    finally:
        await admin.close()


async def count_statuses(topic: str, partitions: int) -> tuple[int, int]:
    """(records, distinct message ids) now in `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records, ids = 0, set()
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for items in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in items:
                    records += 1
                    ids.add(orjson.loads(r.value)["message_id"])
        return records, len(ids)
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Turn:
    """One turn of the load against one server."""

    requests: int  # timed requests
    warmup: int  # requests before the timing started
    codes: Counter[str]
    seconds: float
    latencies_ms: list[float]
    cpu: CpuMeter


@dataclass(frozen=True)
class WebhookRun:
    """One server's figures over its turns of one phase."""

    label: str  # "1@32": one status per POST over 32 connections
    server: str  # "role" or "floor"
    batch: int
    connections: int
    statuses: int  # posted in all turns, warm-ups included (each must be in the topic once)
    turns: list[Turn]
    records: int
    distinct: int
    rss_peak: int

    @property
    def requests(self) -> int:
        return sum(t.requests for t in self.turns)

    @property
    def warmup(self) -> int:
        return sum(t.warmup for t in self.turns)

    @property
    def codes(self) -> dict[str, int]:
        return dict(sum((t.codes for t in self.turns), Counter()))

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.turns)

    @property
    def rate(self) -> float:
        return self.requests * self.batch / self.seconds

    @property
    def cpu(self) -> CpuMeter:
        return CpuMeter.total([t.cpu for t in self.turns])

    @property
    def cpu_us(self) -> float:
        """The server's CPU per status posted (warm-ups included, as the CPU is)."""
        return cpu_us(self.cpu, self.server, self.statuses)

    def turn_cpu_us(self, turn: Turn) -> float:
        return cpu_us(turn.cpu, self.server, self.statuses // len(self.turns))

    def latency_ms(self, quantile: float) -> float:
        lat = sorted(ms for t in self.turns for ms in t.latencies_ms)
        return lat[min(len(lat) - 1, int(len(lat) * quantile))]

    @property
    def p50_ms(self) -> float:
        return self.latency_ms(0.5)

    @property
    def p99_ms(self) -> float:
        return self.latency_ms(0.99)

    @property
    def max_ms(self) -> float:
        return max(ms for t in self.turns for ms in t.latencies_ms)


def role_settings(s: Scratch, topic: str, prefix: str, port: int) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": KAFKA},
        "topics": {"message_status_updates": topic, "dlq": s.topic("dlq")},
        "redis": {"url": REDIS, "key_prefix": prefix},
        "postgres": {"url": s.database_url},
        "webhooks": {"port": port},
        "whatsapp": {"phone_number_id": PHONE, "app_secret": SECRET},
        "observability": {"log_level": "WARNING"},
    }


async def start_server(
    server: str, s: Scratch, topic: str, prefix: str, port: int
) -> asyncio.subprocess.Process:
    """The role (`--worker`: a real App) or the floor (bench/webhook_floor.py) on `port`."""
    if server == "role":
        doc = role_settings(s, topic, prefix, port)
        argv = [__file__, "--worker", orjson.dumps(doc).decode()]
    else:
        doc = {"kafka": KAFKA, "topic": topic, "redis_url": REDIS, "redis_prefix": prefix,
               "port": port, "secret": SECRET, "phone": PHONE}  # fmt: skip
        argv = [str(REPO / "bench" / "webhook_floor.py"), orjson.dumps(doc).decode()]
    return await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE
    )


async def run_phase(
    s: Scratch,
    *,
    statuses: int,
    batch: int,
    connections: int,
    rounds: int,
    profile: Path | None = None,
) -> dict[str, WebhookRun]:
    """Both servers started, the load sent to them in turns (floor first), `rounds` each."""
    label = f"{1 if batch == 1 else 2}@{connections}"
    servers = ("floor", "role")
    names = {server: f"wh-{server}-{label.replace('@', '-')}" for server in servers}
    await create_topics(s, list(names.values()))
    ports = {server: free_port() for server in servers}
    procs: dict[str, asyncio.subprocess.Process] = {}
    spies: list[asyncio.subprocess.Process] = []
    turns: dict[str, list[Turn]] = {server: [] for server in servers}
    try:
        with contextlib.ExitStack() as samplers:
            rss: dict[str, RssSampler] = {}
            for server in servers:
                name = names[server]
                procs[server] = await start_server(
                    server, s, s.topic(name), s.redis_prefix(name), ports[server]
                )
                rss[server] = samplers.enter_context(RssSampler(procs[server].pid))
            for server in servers:
                await read_line(procs[server], "READY", 90)
                if profile is not None:
                    path = profile / f"{server}-{label}.raw"
                    spies.append(await start_profile(procs[server].pid, path))
            for turn in range(rounds):
                for server in servers:
                    load = {"statuses": statuses, "batch": batch, "connections": connections}
                    got = await drive(server, procs[server].pid, ports[server], turn + 1, load)
                    turns[server].append(got)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            async with asyncio.timeout(30):
                await spy.wait()
        for proc in procs.values():
            await stop_process(proc)
    runs = {}
    for server in servers:
        records, distinct = await count_statuses(s.topic(names[server]), s.partitions)
        runs[server] = WebhookRun(
            label=label,
            server=server,
            batch=batch,
            connections=connections,
            statuses=statuses * rounds,
            turns=turns[server],
            records=records,
            distinct=distinct,
            rss_peak=rss[server].peak,
        )
    return runs


async def drive(server: str, pid: int, port: int, seed: int, load: dict[str, int]) -> Turn:
    """One turn: a load generator sends `load["statuses"]` (new ones for each `seed`) to the
    server on `port`, `load["batch"]` per POST over `load["connections"]`; CPU measured."""
    statuses, batch, connections = load["statuses"], load["batch"], load["connections"]
    # Warm-up: a few answers per connection, left out of the figures (counted for correctness).
    warmup = min(4 * connections, statuses // batch // 10)
    load = {"port": port, "webhooks": statuses, "batch": batch, "connections": connections,
            "warmup": warmup, "seed": seed}  # fmt: skip
    gen = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", orjson.dumps(load).decode(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        limit=_DONE_LINE_LIMIT,
    )  # fmt: skip
    try:
        await read_line(gen, "READY", 120)
        cpu = CpuMeter({server: pid, "generator": gen.pid, **service_pids()})
        cpu.start()
        assert gen.stdin is not None
        gen.stdin.write(b"go\n")
        await gen.stdin.drain()
        done = orjson.loads((await read_line(gen, "DONE", 3600)).split(" ", 1)[1])
        cpu.stop()
    finally:
        await stop_process(gen)
    return Turn(
        requests=len(done["latencies_ms"]),
        warmup=done["warmup"],
        codes=Counter(done["codes"]),
        seconds=done["seconds"],
        latencies_ms=done["latencies_ms"],
        cpu=cpu,
    )


async def start_profile(pid: int, path: Path) -> asyncio.subprocess.Process:
    """py-spy sampling `pid` (200 Hz, raw collapsed stacks to `path`) until stopped. It slows the
    process it samples: the figures of a profiled run are not comparable."""
    spy = py_spy() or "py-spy"  # checked at start-up
    return await asyncio.create_subprocess_exec(
        spy, "record", "-p", str(pid), "-r", "200", "--format", "raw", "-o", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def py_spy() -> str | None:
    """py-spy beside this interpreter (the project's venv) or on PATH; None if neither has it."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


# -- the report -----------------------------------------------------------------------------------


def webhook_line(run: WebhookRun) -> str:
    return (
        f"    ({run.label} {run.server}) {run.rate:,.0f} statuses/s "
        f"({run.requests / run.seconds:,.0f} requests/s), {run.cpu_us:.0f} us CPU per status, "
        f"ack p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, max {run.max_ms:.1f} ms (after "
        f"{run.warmup} warm-up requests, {len(run.turns)} turns); answers {run.codes}; records "
        f"{run.records} ({run.distinct} messages) for {run.statuses} statuses; RSS peak "
        f"{run.rss_peak / 2**20:.0f} MB\n"
    )


def webhook_problems(run: WebhookRun) -> list[str]:
    problems = []
    if run.codes != {"200": run.requests + run.warmup}:
        problems.append(f"({run.label} {run.server}) answers other than 200: {run.codes}")
    if (run.records, run.distinct) != (run.statuses, run.statuses):
        problems.append(
            f"({run.label} {run.server}) {run.records} records for {run.distinct} of "
            f"{run.statuses} statuses"
        )
    return problems


def cpu_us(cpu: CpuMeter, name: str, count: int) -> float:
    return cpu.seconds.get(name, 0.0) / count * 1e6


def run_figures(run: WebhookRun) -> dict[str, Any]:
    return {
        "server": run.server, "batch": run.batch, "connections": run.connections,
        "rate": run.rate, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms, "codes": run.codes,
        "records": run.records, "distinct": run.distinct, "cpu_us": run.cpu_us,
        "turns": len(run.turns),
        "turn_cpu_us": [run.turn_cpu_us(turn) for turn in run.turns],
    }  # fmt: skip


def over(cpu_us: float, floor_us: float) -> float | None:
    """`cpu_us` over the floor's (or the router's), or None when that reads 0: below the
    resolution of the kernel's CPU clock (10 ms), as in the smoke test's short turns."""
    return cpu_us / floor_us if floor_us > 0 else None


def targets(
    role: dict[str, WebhookRun], floor: dict[str, WebhookRun]
) -> list[tuple[str, str, str, bool]]:
    """The standing targets, each against a figure of the same run: (what, measured, target,
    met). One status per POST: CPU per status at most 1.5x the floor's, ack p99 under 100 ms,
    and at least half the floor's rate, at each number of connections."""
    rows = []
    for label, run in role.items():
        if run.batch != 1:
            continue
        cpu = over(run.cpu_us, floor[label].cpu_us)
        ratio = run.rate / floor[label].rate
        shown, met = ("n/a", False) if cpu is None else (f"{cpu:.2f}", cpu <= 1.5)
        rows += [
            (f"({label}) CPU per status / the floor's", shown, "<= 1.5", met),
            (f"({label}) ack p99", f"{run.p99_ms:.0f} ms", "< 100 ms", run.p99_ms < 100),
            (f"({label}) statuses/s / the floor's", f"{ratio:.2f}", ">= 0.5", ratio >= 0.5),
        ]  # fmt: skip
    return rows


async def bench(args: argparse.Namespace) -> bool:
    out(
        f"webhooks benchmark: {args.webhooks} statuses per turn, {args.rounds} turns per server "
        f"and phase, one per POST over "
        f"{args.connections} connections, {args.batch} per POST over {args.connections[0]}; "
        f"router {args.router_messages} messages; {args.partitions} partitions; "
        f"Kafka {KAFKA}, {psutil.cpu_count()} CPUs\n"
    )
    if args.profile is not None:
        out(f"PROFILING (py-spy into {args.profile}): the figures are not comparable\n")
        args.profile.mkdir(parents=True, exist_ok=True)
    async with scratch(args.partitions) as s:
        await produce_messages(s.topic("in"), args.router_messages, 2000)
        router: RouterRun = await run_router(s, "a", 0.0, args.router_messages, None)
        out(
            f"    (r) router, 0 ms provider: {router.rate:,.0f} msg/s, "
            f"{router.provider_sends} sends, DLQ {router.dlq}\n"
        )
        out(router.cpu.report("(r) router", args.router_messages))
        role: dict[str, WebhookRun] = {}
        floor: dict[str, WebhookRun] = {}
        phases = [(1, c) for c in args.connections] + [(args.batch, args.connections[0])]
        for batch, connections in phases:
            runs = await run_phase(
                s, statuses=args.webhooks, batch=batch, connections=connections,
                rounds=args.rounds, profile=args.profile,
            )  # fmt: skip
            floor[runs["floor"].label] = runs["floor"]
            role[runs["role"].label] = runs["role"]
            for run in runs.values():
                out(webhook_line(run))
                out(run.cpu.report(f"({run.label} {run.server})", run.statuses))
            turns = zip(runs["role"].turns, runs["floor"].turns, strict=True)
            each = [
                over(runs["role"].turn_cpu_us(r), runs["floor"].turn_cpu_us(f)) for r, f in turns
            ]
            out(
                f"    ({runs['role'].label}) CPU per status / the floor's, turn by turn: "
                + ", ".join("n/a" if ratio is None else f"{ratio:.2f}" for ratio in each)
                + "\n"
            )

        router_cpu = cpu_us(router.cpu, "router", args.router_messages)
        out(
            f"\nrouter: {router.rate:,.0f} msg/s, {router_cpu:.0f} us CPU per message\n"
            f"{'':18} {'statuses/s':>11} {'CPU us/status':>14} {'p50 ms':>7} {'p99 ms':>7}  "
            f"{'floor statuses/s':>16} {'floor CPU us':>12} {'floor p99':>9}\n"
        )
        for label, run in role.items():
            base = floor[label]
            what = f"({label}) {'one' if run.batch == 1 else run.batch} per POST"
            out(
                f"{what:18} {run.rate:>11,.0f} {run.cpu_us:>14.0f} {run.p50_ms:>7.1f} "
                f"{run.p99_ms:>7.1f}  {base.rate:>16,.0f} {base.cpu_us:>12.0f} "
                f"{base.p99_ms:>9.1f}\n"
            )
        for label, run in role.items():
            if run.batch == 1:
                share = over(run.cpu_us, router_cpu)
                shown = "n/a" if share is None else f"{share:.2f}"
                out(f"({label}) CPU per status / the router's per message: {shown}\n")
        out(f"\n{'target':52} {'measured':>9} {'target':>9} {'met':>4}\n")
        for what, measured, target, met in targets(role, floor):
            out(f"{what:52} {measured:>9} {target:>9} {'yes' if met else 'NO':>4}\n")
        problems = [p for run in (*floor.values(), *role.values()) for p in webhook_problems(run)]
        if router.provider_sends != args.router_messages or router.dlq:
            problems.append(f"(r) router: {router.provider_sends} sends, {router.dlq} DLQ")
        for problem in problems:
            out(f"PROBLEM: {problem}\n")
        if not problems:
            out("RESULT: every status acknowledged 200 and produced once\n")
        if args.json:
            figures = {
                "router": {"rate": router.rate, "cpu_us": router_cpu},
                "runs": {label: run_figures(run) for label, run in role.items()},
                "floors": {label: run_figures(run) for label, run in floor.items()},
                "targets": [
                    {"what": what, "measured": measured, "target": target, "met": met}
                    for what, measured, target, met in targets(role, floor)
                ],
                "problems": problems,
            }
            data = orjson.dumps(figures, option=orjson.OPT_INDENT_2)
            await asyncio.to_thread(Path(args.json).write_bytes, data)
        return not problems


def connection_counts(text: str) -> list[int]:
    counts = [int(c) for c in text.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("a comma list of connection counts, e.g. 32,64")
    return counts


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webhooks", type=int, default=20_000, help="statuses per turn")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each server per phase")
    parser.add_argument("--batch", type=int, default=10, help="statuses per POST in (2)")
    parser.add_argument(
        "--connections", type=connection_counts, default=[32, 64],
        help="one per POST over each of these (a comma list); --batch over the first",
    )  # fmt: skip
    parser.add_argument("--router-messages", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each server into DIR")
    parser.add_argument("--worker", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="LOAD_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile is not None and py_spy() is None:
        parser.error("--profile samples with py-spy, which is not installed: pip install py-spy")
    # The collector as `chat4all-workers run` sets it, in the role and the floor alike.
    collector.tune()
    collector.freeze()
    if args.worker:
        await worker(orjson.loads(args.worker))
        return 0
    if args.client:
        await client(orjson.loads(args.client))
        return 0
    return 0 if await bench(args) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
