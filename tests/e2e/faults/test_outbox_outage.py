"""The outbox through a real Kafka outage: `scripts/devstack stop kafka`, a pause, `start kafka`.

1,000 events over 50 aggregates are written as a steady stream, a quarter before the outage, half
during it and the rest after, while one `chat4all-workers run --roles outbox` process publishes.
Afterwards each event is on its topic exactly once (counted by its `event_id` header), every
aggregate's events are in order, nothing was dead-lettered, no attempt was burned, the breaker
opened within 5 s of the broker going away, and the outage cost fewer than 20 log lines above
INFO. `OUTBOX_OUTAGE_S` sets the outage (20 s here; `make soak` runs 75 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson
import pytest

from harness.deployment import Deployment
from harness.processes import WorkerProcess
from harness.topics import read_topic
from harness.waiting import eventually
from tests.own_stack import OwnStack

OUTAGE_S = float(os.environ.get("OUTBOX_OUTAGE_S", "20"))
ROUNDS = 20
AGGREGATES = 50
BREAKER_OPEN_WITHIN_S = 5.0
MAX_LOUD_LINES = 20

# On the directory's own stack (conftest.py), one test at a time on one xdist worker.
pytestmark = [
    pytest.mark.stack,
    pytest.mark.faults,
    pytest.mark.xdist_group("faults"),
    pytest.mark.timeout(OUTAGE_S * 3 + 150),
]


@dataclass(frozen=True)
class Summary:
    events: int
    distinct: int
    duplicates: int
    out_of_order: int
    dead_lettered: int
    attempts_burned: int
    without_traceparent: int
    breaker_open_after_s: float | None
    loud_lines: list[str]


async def test_fault_outbox_publishes_each_event_once_in_order_through_a_kafka_outage(
    deployment: Deployment,
    own_stack: OwnStack,
    tmp_path: Path,
    record_summary: Callable[[str], None],
) -> None:
    summary = await outbox_through_outage(deployment, own_stack, tmp_path, outage_s=OUTAGE_S)

    record_summary(
        f"outbox, kafka stopped {OUTAGE_S:.0f} s: events={summary.events} "
        f"distinct={summary.distinct} duplicates={summary.duplicates} "
        f"out_of_order={summary.out_of_order} dlq={summary.dead_lettered} "
        f"attempts_burned={summary.attempts_burned} "
        f"no_traceparent={summary.without_traceparent} "
        f"breaker_open_after_s={summary.breaker_open_after_s} "
        f"log_lines_above_info={len(summary.loud_lines)}"
    )
    assert summary.distinct == ROUNDS * AGGREGATES
    assert summary.duplicates == 0
    assert summary.out_of_order == 0
    assert summary.dead_lettered == 0
    assert summary.attempts_burned == 0
    assert summary.without_traceparent == 0
    assert summary.breaker_open_after_s is not None
    assert summary.breaker_open_after_s < BREAKER_OPEN_WITHIN_S
    assert len(summary.loud_lines) < MAX_LOUD_LINES, "\n".join(summary.loud_lines)


async def outbox_through_outage(
    deployment: Deployment, stack: OwnStack, log_dir: Path, *, outage_s: float
) -> Summary:
    env = deployment.environ(outbox={"poll_interval_ms": 200, "batch_size": 100})
    worker = WorkerProcess("outbox", env, log_dir / "outbox.log")
    kafka = deployment.stack.addresses()["kafka"]
    pool = await asyncpg.create_pool(deployment.database_url, min_size=1, max_size=2)
    try:
        await worker.start()
        await worker.ready()
        pace_s = outage_s / (ROUNDS / 2)  # half the rounds land during the outage
        for n in range(ROUNDS // 4):
            await insert_round(pool, n)
            await asyncio.sleep(pace_s)
        async with asyncio.TaskGroup() as tasks:
            stopped = tasks.create_task(stack.adevstack("stop", "kafka", timeout_s=120))
            outage_began = await port_closed(kafka)
            await insert_round(pool, ROUNDS // 4)  # traffic from the first moment of the outage
            await stopped
        for n in range(ROUNDS // 4 + 1, ROUNDS * 3 // 4):
            await asyncio.sleep(pace_s)
            await insert_round(pool, n)
        await asyncio.sleep(max(0.0, outage_began + outage_s - time.time()))
        await stack.adevstack("start", "kafka", timeout_s=120)
        for n in range(ROUNDS * 3 // 4, ROUNDS):
            await insert_round(pool, n)
        await eventually(
            lambda: _none_pending(pool), timeout_s=120, interval_s=0.5, message="outbox drained"
        )
        burned = int(await pool.fetchval("SELECT count(*) FROM outbox_events WHERE attempts > 0"))
    finally:
        await worker.stop()
        await pool.close()
    records = await read_topic(deployment.stack, deployment.topics["message_events"])
    dlq = await read_topic(deployment.stack, deployment.topics["dlq"])
    ids = Counter(dict(r.headers)["event_id"] for r in records)
    seen: dict[int, list[int]] = defaultdict(list)
    for r in records:
        payload = orjson.loads(r.value or b"{}")
        seen[payload["conversation_id"]].append(payload["n"])
    logs = worker.log_records()
    opened = [
        _at(line) for line in logs if "kafka circuit breaker open" in str(line.get("message"))
    ]
    after_outage = [_at(line) - outage_began for line in logs if _loud(line)]
    loud = [
        f"{line.get('level')} {line.get('logger')}: {str(line.get('message'))[:160]}"
        for line, offset in zip([x for x in logs if _loud(x)], after_outage, strict=True)
        if offset > -1.0
    ]
    return Summary(
        events=len(records),
        distinct=len(ids),
        duplicates=sum(n - 1 for n in ids.values()),
        out_of_order=sum(1 for ns in seen.values() for a, b in itertools.pairwise(ns) if b <= a),
        dead_lettered=len(dlq),
        attempts_burned=burned,
        without_traceparent=sum(1 for r in records if "traceparent" not in dict(r.headers)),
        breaker_open_after_s=round(min(opened) - outage_began, 2) if opened else None,
        loud_lines=loud,
    )


async def insert_round(pool: asyncpg.Pool, n: int) -> None:
    """One event for every aggregate, payload {conversation_id, n}, in one transaction."""
    await pool.execute(
        """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
           SELECT gen_random_uuid(), 'conversation', a::text, 'message.updated',
                  jsonb_build_object('conversation_id', a, 'n', $2::int)
           FROM generate_series(1, $1) a""",
        AGGREGATES,
        n,
    )


async def port_closed(address: tuple[str, int]) -> float:
    """The wall-clock time at which `address` stopped accepting connections."""
    while True:
        try:
            async with asyncio.timeout(0.2):
                _, writer = await asyncio.open_connection(*address)
        except (OSError, TimeoutError):
            return time.time()
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)


def _loud(line: dict[str, object]) -> bool:
    return line.get("level") in ("WARNING", "ERROR", "CRITICAL")


def _at(line: dict[str, object]) -> float:
    with contextlib.suppress(TypeError, ValueError):
        return datetime.fromisoformat(str(line["timestamp"])).timestamp()
    return 0.0


async def _none_pending(pool: asyncpg.Pool) -> bool:
    return int(await pool.fetchval("SELECT count(*) FROM outbox_events WHERE NOT published")) == 0
