"""`chat4all-workers status`: the one screen an on-call engineer reads first.

Everything is read from the outside (Kafka offsets, PostgreSQL, Redis, the workers' `/readyz`), so
it works against any deployment whose services it can reach; each probe is time-boxed and a probe
that fails is reported as such instead of hiding the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer

from chat4all_workers.config import Settings
from chat4all_workers.db.files import count_stuck_merging
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.admin import new_admin, topic_partitions
from chat4all_workers.kafka.replay import replay_group
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources

T = TypeVar("T")
_PROBE_TIMEOUT_S = 5.0


@frozen
class Thresholds:
    max_lag: int = 10_000
    max_outbox_age_s: float = 300.0


DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class GroupLag:
    group: str
    topic: str
    lag: int
    partitions: int


@dataclass
class WorkerStatus:
    url: str
    reachable: bool
    ready: bool = False
    roles: dict[str, str] = field(default_factory=dict)
    breaker: str | None = None
    # The router's sending accounts (/readyz `accounts`): {"whatsapp/acme": {"state",
    # "reason", "since", "held", ...}}
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class StatusReport:
    consumer_lag: list[GroupLag] = field(default_factory=list)
    outbox_pending: int | None = None
    outbox_oldest_age_s: float | None = None
    fallback_queue: int | None = None
    fallback_dead: int | None = None
    dlq_depth: int | None = None
    dlq_unreplayed: int | None = None
    files_stuck_merging: int | None = None
    workers: list[WorkerStatus] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


async def collect_status(
    settings: Settings, *, workers: list[str], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> StatusReport:
    report = StatusReport()
    await asyncio.gather(
        _guard(report, "kafka", _kafka_status(settings, report)),
        _guard(report, "postgres/redis", _store_status(settings, report)),
        *(_guard(report, url, _worker_status(url, report)) for url in workers),
    )
    _judge(report, settings, thresholds)
    return report


async def _guard(report: StatusReport, name: str, probe: Awaitable[None]) -> None:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S * 3):
            await probe
    except Exception as exc:  # noqa: BLE001 - a failed probe is reported, never fatal
        report.errors[name] = f"{type(exc).__name__}: {exc}"


async def _kafka_status(settings: Settings, report: StatusReport) -> None:
    admin = new_admin(settings, "status")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-status",
        request_timeout_ms=int(_PROBE_TIMEOUT_S * 1000),
    )
    await admin.start()
    try:
        await consumer.start()
        try:
            listed = [g[0] for g in await admin.list_consumer_groups()]
            groups = sorted(g for g in listed if _ours(settings, g))
            for group in groups:
                offsets = await admin.list_consumer_group_offsets(group)
                if not offsets:
                    continue
                ends = await consumer.end_offsets(list(offsets))
                by_topic: dict[str, list[int]] = {}
                for tp, meta in offsets.items():
                    by_topic.setdefault(tp.topic, []).append(max(0, ends[tp] - max(meta.offset, 0)))
                for topic, lags in sorted(by_topic.items()):
                    if group == replay_group(settings):
                        continue
                    report.consumer_lag.append(GroupLag(group, topic, sum(lags), len(lags)))
            tps = await topic_partitions(admin, settings.topics.dlq)
            if tps:
                begins, ends = (
                    await consumer.beginning_offsets(tps),
                    await consumer.end_offsets(tps),
                )
                report.dlq_depth = sum(ends[tp] - begins[tp] for tp in tps)
                replayed = await admin.list_consumer_group_offsets(
                    replay_group(settings), partitions=tps
                )
                report.dlq_unreplayed = sum(
                    ends[tp] - max(begins[tp], replayed[tp].offset if tp in replayed else -1)
                    for tp in tps
                )
            else:
                report.dlq_depth = report.dlq_unreplayed = 0
        finally:
            await consumer.stop()
    finally:
        await admin.close()


def _ours(settings: Settings, group: str) -> bool:
    """A group this deployment consumes with: one `kafka.groups` names, or
    `<consumer_group>-<name>` unless `kafka.groups` moved <name> to another group (a stale group
    whose lag only grows)."""
    kafka = settings.kafka
    if group in kafka.groups.values():
        return True
    prefix = f"{kafka.consumer_group}-"
    return group.startswith(prefix) and kafka.group_for(group.removeprefix(prefix)) == group


async def _store_status(settings: Settings, report: StatusReport) -> None:
    needs = frozenset({Need.POSTGRES, Need.REDIS})
    async with open_resources(
        settings, Metrics(), needs, connect_timeout_s=_PROBE_TIMEOUT_S
    ) as res:
        pg, redis = res.postgres(), res.redis_client()
        row = await pg.fetchrow(
            """SELECT count(*) AS pending,
                      extract(epoch FROM now() - min(created_at)) AS oldest_age_s
               FROM outbox_events WHERE NOT published"""
        )
        report.outbox_pending = int(row["pending"])
        report.outbox_oldest_age_s = (
            None if row["oldest_age_s"] is None else float(row["oldest_age_s"])
        )
        report.files_stuck_merging = await count_stuck_merging(
            pg, minutes=settings.files.merging_stuck_minutes
        )
        queue = res.redis_key(settings.fallback.queue_key)
        report.fallback_queue = int(await redis.llen(queue))
        report.fallback_dead = int(await redis.llen(f"{queue}:dead"))


async def _worker_status(url: str, report: StatusReport) -> None:
    worker = WorkerStatus(url=url, reachable=False)
    report.workers.append(worker)
    timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(url.rstrip("/") + "/readyz") as response:
                body = await response.json(content_type=None)
                worker.reachable = True
                worker.ready = response.status == 200
                worker.roles = {
                    name: r.get("state", "?") for name, r in body.get("roles", {}).items()
                }
                worker.breaker = body.get("circuit_breakers", {}).get("kafka")
                accounts = body.get("accounts")
                if isinstance(accounts, dict):
                    worker.accounts = {
                        str(name): dict(state)
                        for name, state in accounts.items()
                        if isinstance(state, dict)
                    }


def _judge(report: StatusReport, settings: Settings, thresholds: Thresholds) -> None:
    problems = report.problems
    problems += [f"cannot read {name}: {error}" for name, error in report.errors.items()]
    problems += [
        f"consumer group {g.group} is {g.lag} records behind on {g.topic}"
        for g in report.consumer_lag
        if g.lag > thresholds.max_lag
    ]
    if (
        report.outbox_oldest_age_s is not None
        and report.outbox_oldest_age_s > thresholds.max_outbox_age_s
    ):
        problems.append(f"oldest unpublished outbox event is {report.outbox_oldest_age_s:.0f}s old")
    if report.files_stuck_merging:
        problems.append(
            f"{report.files_stuck_merging} files stuck in MERGING "
            f"over {settings.files.merging_stuck_minutes:.0f} min"
        )
    if report.fallback_dead:
        problems.append(f"{report.fallback_dead} unreadable items in the fallback dead list")
    for w in report.workers:
        if not w.reachable:
            problems.append(f"worker {w.url} does not answer")
        elif not w.ready:
            problems.append(f"worker {w.url} is not ready (breaker {w.breaker}, roles {w.roles})")
        for name, account in w.accounts.items():
            if account.get("state") == "paused":
                problems.append(
                    f"worker {w.url}: account {name} paused since {account.get('since')}: "
                    f"{account.get('reason')} ({account.get('held', '?')} sends held)"
                )


def render(report: StatusReport, *, write: Callable[[str], Any]) -> None:
    """The human table."""

    def line(label: str, value: object) -> None:
        write(f"{label:<34} {value}\n")

    write("CONSUMER LAG\n")
    if not report.consumer_lag:
        write("  (no consumer groups)\n")
    for g in report.consumer_lag:
        write(f"  {g.group:<40} {g.topic:<28} {g.lag:>10} ({g.partitions} partitions)\n")
    write("\n")
    age = "-" if report.outbox_oldest_age_s is None else f"{report.outbox_oldest_age_s:.1f}s"
    line("outbox pending (oldest)", f"{_show(report.outbox_pending)} ({age})")
    line("fallback queue (dead)", f"{_show(report.fallback_queue)} ({_show(report.fallback_dead)})")
    line("DLQ depth (not replayed)", f"{_show(report.dlq_depth)} ({_show(report.dlq_unreplayed)})")
    line("files stuck in MERGING", _show(report.files_stuck_merging))
    write("\nWORKERS\n")
    for w in report.workers:
        state = "unreachable" if not w.reachable else ("ready" if w.ready else "NOT READY")
        roles = ", ".join(f"{k}={v}" for k, v in w.roles.items())
        write(f"  {w.url:<32} {state:<12} breaker={w.breaker or '-'}  {roles}\n")
        if w.accounts:
            paused = sorted(k for k, v in w.accounts.items() if v.get("state") == "paused")
            shown = f" ({len(paused)} paused: {', '.join(paused[:10])})" if paused else ""
            more = " ..." if len(paused) > 10 else ""
            write(f"  {'':<32} sending accounts: {len(w.accounts)}{shown}{more}\n")
    write("\n" + ("HEALTHY\n" if report.healthy else "UNHEALTHY\n"))
    for problem in report.problems:
        write(f"  - {problem}\n")


def _show(value: int | None) -> str:
    return "?" if value is None else str(value)
