"""The lines an operator follows, read from the JSON log of a real `chat4all-workers run`: the
ready line, the progress lines, the drain summary, and one condition's warnings rate-limited.

The reporter's own arithmetic (a restarted role's totals, the rate) is tested in process first.
Then one process runs the status updater and the router (with the channel mocks) over records
produced beforehand: 3,000 statuses of messages that have no `messages` row, 20 messages to
send (each also a SENT status of a message without a row), and records that are dead-lettered.
It is stopped with SIGTERM once the progress lines say everything was processed; the tests read
what it wrote. A second process (the webhooks role, progress lines off) checks the ready line's
address and that `progress_interval_s = 0` writes none.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from chat4all_workers.kafka.consumer import ConsumerStats
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.readiness import ChildStats
from chat4all_workers.reporting import Reporter
from chat4all_workers.resources import Resources
from chat4all_workers.role import RoleContext, RoleReport
from chat4all_workers.roles import load_settings
from harness.deployment import Deployment, isolated_deployment
from harness.processes import WorkerProcess
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.support import occurrences, produce, router_record

UNKNOWN_STATUSES = 3000
SENT = 20  # router messages, each sent once: one SENT status each, for a message without a row
INVALID_STATUSES = 2
INVALID_MESSAGES = 1
STATUS_RECORDS = UNKNOWN_STATUSES + SENT + INVALID_STATUSES
ROUTER_RECORDS = SENT + INVALID_MESSAGES


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def engine_stats(finished: int, committed: int) -> ConsumerStats:
    return ConsumerStats(
        group_id="g", topics=("t",), assigned=1, in_flight=0, held=0, paused=False,
        finished_total=finished, last_commit_age_s=None, lag=0, committed_total=committed,
    )  # fmt: skip


def in_process_reporter(clock: Clock) -> tuple[Reporter, RoleContext]:
    settings = load_settings({})
    metrics = Metrics()
    ctx = RoleContext("router", settings, Resources(settings, metrics), metrics, asyncio.Event())
    child = ChildStats("router", "running", True, "permanent", 0, None, stop_s=0.5)
    reporter = Reporter(
        contexts={"router": ctx},
        children=lambda: [child],
        metrics=metrics,
        interval_s=30,
        operations_port=8000,
        stopping=asyncio.Event(),
        clock=clock,
    )
    return reporter, ctx


def fields_of(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    found = [getattr(r, "fields", {}) for r in caplog.records]
    return [f for f in found if f.get("event") == event]


async def test_reporter_keeps_the_totals_of_an_engine_replaced_by_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter, ctx = in_process_reporter(clock)
    first = engine_stats(finished=10, committed=8)
    ctx.report(lambda: RoleReport(engine=first))
    caplog.set_level(logging.INFO, logger="chat4all_workers.reporting")

    clock.now = 30
    reporter.progress_lines()
    first = engine_stats(finished=12, committed=12)  # where the crashed engine ended
    ctx.report(lambda: RoleReport(engine=engine_stats(finished=3, committed=2)))  # restarted
    clock.now = 60
    reporter.progress_lines()
    reporter.drain_summary()

    progress = fields_of(caplog, "progress")
    assert [(p["processed"], p["processed_total"]) for p in progress] == [(10, 10), (5, 15)]
    (drained,) = fields_of(caplog, "drain")
    assert drained["committed_total"] == 14


async def test_reporter_rate_is_what_was_processed_over_the_time_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter, ctx = in_process_reporter(clock)
    stats = engine_stats(finished=0, committed=0)
    ctx.report(lambda: RoleReport(engine=stats))
    caplog.set_level(logging.INFO, logger="chat4all_workers.reporting")

    clock.now = 30
    reporter.progress_lines()
    stats = engine_stats(finished=120, committed=120)
    clock.now = 50  # a line 20 s after the last one (a late loop)
    reporter.progress_lines()

    rates = [(p["rate_per_s"], p["interval_s"]) for p in fields_of(caplog, "progress")]
    assert rates == [(0.0, 30.0), (6.0, 20.0)]


@dataclass(frozen=True)
class Run:
    deployment: Deployment
    log: list[dict[str, Any]]
    exit_code: int

    def lines(self, event: str, role: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.log
            if line.get("event") == event and (role is None or line.get("role") == role)
        ]


def unknown_status(n: int) -> tuple[bytes, bytes]:
    update = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": n % 50,
        "channel": "whatsapp",
        "new_status": ("SENT", "DELIVERED", "READ")[n % 3],
        "timestamp": "2026-11-28T10:30:00+00:00",
    }
    return f"conversation:{n % 50}".encode(), orjson.dumps(update)


def progress_says(log_path: Path, role: str, processed_total: int) -> bool:
    for raw in log_path.read_text(errors="replace").splitlines():
        if '"event":"progress"' in raw:
            line = orjson.loads(raw)
            if line["role"] == role and line["processed_total"] >= processed_total:
                return True
    return False


@pytest.fixture(scope="module")
async def run(
    stack: StackEndpoints, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    async with isolated_deployment(stack, partitions=4, label="reporting") as deployment:
        topics = deployment.topics
        statuses = [unknown_status(n) for n in range(UNKNOWN_STATUSES)]
        statuses += [(b"bad", b"{not json")] * INVALID_STATUSES
        await produce(stack, topics["message_status_updates"], statuses)
        messages = [router_record(c, f"hello {c}") for c in range(SENT)]
        messages += [(b"bad", b"[]")] * INVALID_MESSAGES
        await produce(stack, topics["message_processing"], messages)
        env = deployment.environ(
            observability={"progress_interval_s": 0.5},
            mocks={"delivered_after_ms": 600_000.0, "read_after_ms": 600_000.0},
        )
        log_path = tmp_path_factory.mktemp("reporting") / "worker.log"
        roles = "status_updater,router,whatsapp_mock,instagram_mock"
        worker = await WorkerProcess(roles, env, log_path).start()
        try:
            await worker.ready()
            await eventually(
                lambda: (
                    progress_says(log_path, "status_updater", STATUS_RECORDS)
                    and progress_says(log_path, "router", ROUTER_RECORDS)
                ),
                timeout_s=60,
                interval_s=0.2,
                message=f"progress lines saying {STATUS_RECORDS} and {ROUTER_RECORDS} processed",
            )
            worker.signal(signal.SIGTERM)
            code = await worker.wait(30)
        finally:
            await worker.stop()
        yield Run(deployment, worker.log_records(), code)


@pytest.mark.stack
def test_reporting_ready_line_names_roles_port_partitions_and_channels(run: Run) -> None:
    (ready,) = run.lines("ready")

    assert ready["level"] == "INFO"
    assert ready["operations_port"] == run.deployment.metrics_port
    roles = ready["roles"]
    assert set(roles) == {"status_updater", "router", "whatsapp_mock", "instagram_mock"}
    assert roles["status_updater"]["partitions"] == 4
    assert roles["router"]["partitions"] == 4
    assert (roles["router"]["whatsapp"], roles["router"]["instagram"]) == ("active", "active")
    assert f"operations port {run.deployment.metrics_port}" in ready["message"]


@pytest.mark.stack
def test_reporting_progress_lines_count_each_record_once_with_lag_and_dead_letters(
    run: Run,
) -> None:
    lines = run.lines("progress", "status_updater")

    assert len(lines) >= 2  # small interval: several lines over the run
    assert all(line["service"] == "status_updater" for line in lines)
    assert sum(line["processed"] for line in lines) == lines[-1]["processed_total"]
    assert lines[-1]["processed_total"] == STATUS_RECORDS
    assert lines[-1]["dead_lettered_total"] == INVALID_STATUSES
    assert lines[-1]["lag"] == 0
    assert lines[-1]["in_flight"] == 0
    assert max(line["rate_per_s"] for line in lines) > 0
    assert {"held", "partitions", "interval_s"} <= set(lines[-1])


@pytest.mark.stack
def test_reporting_progress_lines_of_the_router_count_sends_per_channel(run: Run) -> None:
    lines = run.lines("progress", "router")

    assert lines[-1]["processed_total"] == ROUTER_RECORDS
    assert lines[-1]["dead_lettered_total"] == INVALID_MESSAGES
    assert lines[-1]["whatsapp_sent_total"] == SENT
    assert sum(line["whatsapp_sent"] for line in lines) == SENT
    assert lines[-1]["instagram_sent_total"] == 0
    assert (lines[-1]["whatsapp"], lines[-1]["whatsapp_held"]) == ("active", 0)


@pytest.mark.stack
def test_reporting_drain_summary_says_what_each_role_committed_and_handed_back(
    run: Run,
) -> None:
    by_role = {line["role"]: line for line in run.lines("drain")}
    (total,) = run.lines("drain_total")

    assert run.exit_code == 0
    assert set(by_role) == {"status_updater", "router", "whatsapp_mock", "instagram_mock"}
    assert by_role["status_updater"]["committed_total"] == STATUS_RECORDS
    assert by_role["router"]["committed_total"] == ROUTER_RECORDS
    assert [by_role[r]["handed_back"] for r in ("status_updater", "router")] == [0, 0]
    assert all(line["level"] == "INFO" and line["cancelled"] == 0 for line in by_role.values())
    assert all(0 <= line["drain_s"] < 10 for line in by_role.values())
    assert total["committed_total"] == STATUS_RECORDS + ROUTER_RECORDS
    assert (total["level"], total["handed_back"]) == ("INFO", 0)
    assert run.log.index(total) == len(run.log) - 2  # then only "stopped cleanly"


@pytest.mark.stack
def test_reporting_statuses_of_unknown_messages_are_a_few_lines_with_the_right_count(
    run: Run,
) -> None:
    warnings = [line for line in run.log if "for unknown message" in line["message"]]

    assert 1 <= len(warnings) <= 3  # the first, then one per 30 s, and the summary at exit
    assert all(w["level"] == "WARNING" and w["service"] == "status_updater" for w in warnings)
    assert sum(occurrences(w) for w in warnings) == UNKNOWN_STATUSES + SENT
    assert {"message_id", "status", "channel"} <= set(warnings[0])


@pytest.mark.stack
async def test_reporting_interval_0_writes_no_progress_line_and_the_ready_line_has_the_address(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    async with isolated_deployment(stack, partitions=1, label="reporting") as deployment:
        env = deployment.environ(observability={"progress_interval_s": 0})
        worker = await WorkerProcess("webhooks", env, tmp_path / "worker.log").start()
        try:
            await worker.ready()
            url = f"http://127.0.0.1:{deployment.webhooks_port}/webhooks/whatsapp"
            async with aiohttp.ClientSession() as http:
                for _ in range(3):  # refused (unsigned: 401): traffic while it runs
                    async with http.post(url, data=b"{}") as response:
                        assert response.status == 401
            worker.signal(signal.SIGTERM)
            code = await worker.wait(30)
        finally:
            await worker.stop()
    log = worker.log_records()
    (ready,) = [line for line in log if line.get("event") == "ready"]
    drained = [line for line in log if line.get("event") == "drain"]

    assert code == 0
    assert ready["roles"]["webhooks"]["listening"] == f"127.0.0.1:{deployment.webhooks_port}"
    assert [line for line in log if line.get("event") == "progress"] == []
    assert [line["role"] for line in drained] == ["webhooks"]
