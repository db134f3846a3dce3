"""Faults during a steady stream: a worker killed with -9, and each backing service (Kafka,
PostgreSQL, Redis, S3) stopped and started again (PostgreSQL also killed with -9), for real,
through `scripts/devstack`, on the directory's own stack (conftest.py), so the rest of the suite
runs on meanwhile.

Afterwards every message reached READ, or FAILED with a DLQ reason; every file is COMPLETED; no
message was sent twice on a channel; per-conversation order held; no worker needed a manual
restart, and no role crashed. Each test records a summary line (shown at the end of the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from miniopy_async.api import Minio

from harness.deployment import Deployment
from harness.pipeline import Sent, insert_one
from harness.processes import WorkerProcess, deployment_running
from harness.topics import read_topic
from harness.waiting import eventually
from tests.e2e.pipeline import check_deliveries, file_status, mock_sent, statuses, upload_file
from tests.own_stack import OwnStack
from tests.roles.uploads import MIB

# The steady stream each fault hits, and each test's time limit; `make soak` raises them
# (defaults: 20/s for 4 s over 8 conversations, a 3 s outage, 120 s per test).
RATE_PER_S = int(os.environ.get("FAULT_RATE_PER_S", "20"))
SECONDS = int(os.environ.get("FAULT_SECONDS", "4"))
CONVERSATIONS = range(1, 1 + int(os.environ.get("FAULT_CONVERSATIONS", "8")))
OUTAGE_S = float(os.environ.get("FAULT_OUTAGE_S", "3"))
TIMEOUT_S = float(os.environ.get("FAULT_TIMEOUT_S", "120"))

# On the directory's own stack (conftest.py), one test at a time on one xdist worker.
pytestmark = [
    pytest.mark.stack,
    pytest.mark.faults,
    pytest.mark.xdist_group("faults"),
    pytest.mark.timeout(TIMEOUT_S),
]
FAST = {
    "mocks": {"delivered_after_ms": 50.0, "read_after_ms": 100.0},
    "outbox": {"poll_interval_ms": 200, "backoff_base_s": 0.2},
    "fallback": {"poll_interval_s": 0.5},
    # A send in doubt waits this long for the provider's word before it goes again: long enough
    # for a mock that took it to call the webhooks role back once the fault is over (its retries
    # are capped at 5 s), and well under the default 60 s when the mock never had it.
    "router": {"retry_base_s": 0.05, "retry_cap_s": 0.5, "in_doubt_window_s": 20.0 + OUTAGE_S},
    "whatsapp": {"timeout_s": 2.0},
    "instagram": {"timeout_s": 2.0},
    "breaker": {"failure_threshold": 3, "cooldown_s": 1.0, "ack_timeout_s": 3.0},
    "supervisor": {"shutdown_timeout_s": 10.0},
}


@contextlib.asynccontextmanager
async def service_down(stack: OwnStack, name: str, *, kill: bool = False) -> AsyncIterator[None]:
    """`name` stopped for the block, and started again however the block ends: a test that
    fails (its task group cancelling this) while the stop is under way still leaves the
    service up for the tests after it."""
    try:
        await stack.adevstack("stop", *(["--kill"] if kill else []), name, timeout_s=120)
        yield
    finally:
        await stack.adevstack("start", name, timeout_s=120)


async def insert_while_up(deployment: Deployment, *, tag: str) -> list[Sent]:
    """One message per conversation, as the platform's API writes them: while PostgreSQL is down
    its clients get errors and try again, so a failed write is retried (with new content, as a
    write whose commit was lost may have landed; `sent` lists only the ones known written)."""
    written: list[Sent] = []
    for conversation in CONVERSATIONS:
        for attempt in range(300):
            try:
                conn = await asyncpg.connect(deployment.database_url, timeout=2)
                try:
                    content = f"{tag}{conversation}-a{attempt}"
                    written.append(await insert_one(conn, conversation, content))
                finally:
                    await conn.close()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.1)
            except asyncpg.exceptions.InternalClientError:
                # A new connection told of the server's shutdown (57P01) while it was reading
                # that error out: asyncpg refuses a query on it ("cannot switch to state 15;
                # another operation (2) is in progress"). The server is going down: try again.
                await asyncio.sleep(0.1)
        else:
            pytest.fail(f"PostgreSQL did not accept a write for 30 s (conversation {conversation})")
    return written


async def steady_stream(
    deployment: Deployment, during: Callable[[], Coroutine[Any, Any, None]]
) -> list[Sent]:
    """RATE_PER_S messages a second for SECONDS seconds; `during` runs halfway through."""
    sent: list[Sent] = []
    fault: asyncio.Task[None] | None = None
    async with asyncio.TaskGroup() as tasks:
        for tick in range(RATE_PER_S * SECONDS // len(CONVERSATIONS)):
            if tick == RATE_PER_S * SECONDS // len(CONVERSATIONS) // 2:
                fault = tasks.create_task(during())
            sent += await insert_while_up(deployment, tag=f"t{tick}-")
            await asyncio.sleep(len(CONVERSATIONS) / RATE_PER_S)
    assert fault is not None
    return sent


async def settle_and_count(
    deployment: Deployment,
    sent: list[Sent],
    record_summary: Callable[[str], None],
    fault: str,
    *,
    fault_ended: float | None = None,
) -> None:
    """Wait until every message is READ or dead-lettered, then check and summarise; with
    `fault_ended` (monotonic), the summary says how long after it everything settled."""
    ids = [s.message_id for s in sent]
    dead = set()

    async def finished() -> bool:
        nonlocal dead
        states = await statuses(deployment, ids)
        dead = await dead_lettered(deployment)
        return all(states.get(i) == "READ" or i in dead for i in ids)

    await eventually(finished, timeout_s=120, interval_s=0.5, message="every message settled")
    settled = (
        "" if fault_ended is None else f" settled_after_s={time.monotonic() - fault_ended:.1f}"
    )
    states = await statuses(deployment, ids)
    counts = []
    for channel in ("whatsapp", "instagram"):
        accepted = await mock_sent(deployment, channel)
        duplicates, disordered = check_deliveries(sent, accepted)
        counts.append((channel, len(accepted), duplicates, disordered))
    read = sum(1 for i in ids if states.get(i) == "READ")
    lost = len(ids) - read - len(dead & set(ids))
    record_summary(
        f"{fault}: messages={len(ids)} read={read} dlq={len(dead & set(ids))} lost={lost} "
        + " ".join(f"{c}: sent={n} duplicates={d} out_of_order={o}" for c, n, d, o in counts)
        + settled
    )
    assert lost == 0
    assert all(d == 0 and o == 0 for _, _, d, o in counts)


async def dead_lettered(deployment: Deployment) -> set[str]:
    ids = set()
    for record in await read_topic(deployment.stack, deployment.topics["dlq"]):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
            ids.add(str(orjson.loads(record.value)["message_id"]))
    return ids


def no_restart_needed(procs: list[WorkerProcess]) -> None:
    """No process died, and no role in one crashed (an outage is waited out, not crashed on:
    a crash spends the supervisor's restart intensity)."""
    for proc in procs:
        assert proc.proc is not None
        assert proc.proc.returncode is None, f"a worker died:\n{proc.log_tail()}"
        crashes = [
            r.get("message", "")
            for r in proc.log_records()
            if r.get("level") == "ERROR" and " crashed: " in r.get("message", "")
        ]
        assert crashes == [], crashes


async def test_fault_worker_killed_with_sigkill_and_restarted(
    deployment: Deployment, tmp_path: Path, record_summary: Callable[[str], None]
) -> None:
    async with deployment_running(deployment, tmp_path, **FAST) as (workers, mocks):

        async def kill_and_restart() -> None:
            workers.signal(signal.SIGKILL)
            await workers.wait(10)
            await workers.start()
            await workers.ready()

        sent = await steady_stream(deployment, kill_and_restart)
        await settle_and_count(deployment, sent, record_summary, "worker kill -9")
        no_restart_needed([workers, mocks])


@pytest.mark.parametrize(
    ("service", "kill"),
    [("kafka", False), ("postgres", False), ("postgres", True), ("redis", False), ("s3", False)],
    ids=["kafka", "postgres", "postgres-kill-9", "redis", "s3"],
)
async def test_fault_service_stopped_and_started(
    deployment: Deployment,
    s3_client: Minio,
    own_stack: OwnStack,
    tmp_path: Path,
    record_summary: Callable[[str], None],
    service: str,
    kill: bool,
) -> None:
    async with deployment_running(deployment, tmp_path, **FAST) as procs:
        ended: list[float] = []

        async def outage() -> None:
            async with service_down(own_stack, service, kill=kill):
                await asyncio.sleep(OUTAGE_S)
            ended.append(time.monotonic())

        sent = await steady_stream(deployment, outage)
        upload_id = await upload_file(deployment, s3_client, [b"x" * 5 * MIB, b"y" * MIB])
        await settle_and_count(
            deployment,
            sent,
            record_summary,
            f"{service} {'killed' if kill else 'stopped'} and started",
            fault_ended=ended[0],
        )

        async def completed() -> bool:
            return await file_status(deployment, upload_id) == "COMPLETED"

        await eventually(completed, timeout_s=60, interval_s=0.5, message="file COMPLETED")
        no_restart_needed(procs)
