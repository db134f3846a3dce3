"""The router killed with SIGKILL three times during a stream to both channels, as the issue's
user tried it, against the channel mocks calling the webhooks role back (the provider's word).

Three processes: the router (killed and restarted), and the provider's side (the two mocks and
the webhooks role) in another, so what the mocks accepted survives the kills. Afterwards, once
the router's group has committed every record: every (message, channel) was accepted by the
mock exactly once (counted by message id from `/__mock__/sent`), nothing was dead-lettered or
lost, and each conversation's messages were first sent in order. The in-doubt resolutions are
counted from the routers' logs and the webhooks role's `webhook_verdicts_total`.

`KILL_MESSAGES` (600) messages at `KILL_RATE_PER_S` (200/s) over `KILL_CONVERSATIONS` (100)
conversations, as `make test` runs it; `make soak` runs 5,000 over 500 conversations, produced as
fast as Kafka takes them (a backlog: hundreds of sends under way at each kill). The conversations
bound the sends under way (one per conversation and channel at a time).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from chat4all_workers.config import CHANNELS
from harness.deployment import Deployment, free_port
from harness.processes import WorkerProcess
from harness.topics import read_topic
from harness.waiting import eventually
from tests.e2e.pipeline import mock_sent
from tests.support import committed_offsets

MESSAGES = int(os.environ.get("KILL_MESSAGES", "600"))
RATE_PER_S = float(os.environ.get("KILL_RATE_PER_S", "200"))
CONVERSATIONS = int(os.environ.get("KILL_CONVERSATIONS", "100"))
KILLS = 3

pytestmark = [pytest.mark.stack, pytest.mark.timeout(max(240, MESSAGES / RATE_PER_S * 4))]

UNPACED = {"max_rate_per_s": 0.0, "pair_burst": 0, "timeout_s": 2.0}
SETTINGS: dict[str, dict[str, Any]] = {
    "router": {"retry_base_s": 0.05, "retry_cap_s": 0.5, "in_doubt_window_s": 10.0},
    "whatsapp": UNPACED,
    "instagram": UNPACED,
    "mocks": {
        "whatsapp_rate_per_s": 0.0,
        "instagram_rate_per_s": 0.0,
        "pair_burst": 0,
        "delivered_after_ms": 50.0,
        "read_after_ms": 100.0,
    },
}


@dataclass
class Outcome:
    accepted: dict[str, Counter[str]]  # channel -> message id -> times accepted
    out_of_order: dict[str, int]  # channel -> conversations whose first sends are out of order
    dead_lettered: int
    resolutions: Counter[str]
    # Per kill: (message, channel) pairs the provider accepted (before the restart: from requests
    # the killed router had written) that the router had not reported SENT when it died: their
    # outcome was unknown to the router.
    unknown_at_kill: list[int]


def doc(conversation: int, n: int) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "payload": {"type": "text", "content": f"k{conversation}-{n}"},
        "channels": ["whatsapp", "instagram"],
        "recipients": {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"},
        "created_at": "2026-11-28T10:30:00Z",
    }


async def stream(deployment: Deployment, docs: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=deployment.stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for d in docs:
            key = f"conversation:{d['conversation_id']}".encode()
            await producer.send(deployment.topics["message_processing"], orjson.dumps(d), key=key)
            await asyncio.sleep(1 / RATE_PER_S)
        await producer.flush()
    finally:
        await producer.stop()


async def accepted_total(deployment: Deployment) -> int:
    return sum([len(await mock_sent(deployment, c)) for c in CHANNELS])


async def all_committed(deployment: Deployment, expected: int) -> bool:
    topic = deployment.topics["message_processing"]
    offsets = await committed_offsets(deployment.stack, topic, f"{deployment.group}-router")
    return sum(max(0, o) for o in offsets.values()) == expected


async def metric_sum(port: int, name: str, label: str) -> Counter[str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    found: Counter[str] = Counter()
    for match in re.finditer(
        rf'^{name}\{{[^}}]*{label}="([^"]+)"[^}}]*\}} ([\d.e+]+)$', text, re.M
    ):
        found[match.group(1)] += int(float(match.group(2)))
    return found


def resolutions_logged(logs: list[dict[str, Any]]) -> Counter[str]:
    """In-doubt resolutions from the routers' logs (a killed process's metrics die with it)."""
    found: Counter[str] = Counter()
    for line in logs:
        text = str(line.get("message", ""))
        if "send in doubt confirmed by the provider" in text:
            found["confirmed"] += 1
        elif "send in doubt" in text and "sending it again" in text:
            found["resent"] += 1
        elif "send in doubt (" in text and "waiting up to" in text:
            found["in_doubt"] += 1
    return found


async def kill_three_times(
    deployment: Deployment, tmp_path: Path, latency_ms: float
) -> tuple[Outcome, list[dict[str, Any]]]:
    docs = [doc(c, n) for n in range(MESSAGES // CONVERSATIONS) for c in range(CONVERSATIONS)]
    expected = len(docs) * len(CHANNELS)
    sections = {**SETTINGS, "mocks": {**SETTINGS["mocks"], "latency_ms": latency_ms}}
    provider_env = deployment.environ(**sections)
    provider_env["METRICS_PORT"] = str(free_port())
    provider = WorkerProcess(
        "whatsapp_mock,instagram_mock,webhooks", provider_env, tmp_path / "provider.log"
    )
    router = WorkerProcess("router", deployment.environ(**sections), tmp_path / "router.log")
    logs: list[dict[str, Any]] = []
    try:
        await (await provider.start()).ready()
        await (await router.start()).ready()
        producing = asyncio.ensure_future(stream(deployment, docs))
        killed_at: list[float] = []
        restarted_at: list[float] = []
        for kill in range(1, KILLS + 1):
            await eventually(
                lambda k=kill: _at_least(accepted_total(deployment), expected * k // (KILLS + 1)),
                timeout_s=120,
                interval_s=0.05,
                message=f"sends before kill {kill}",
            )
            router.signal(signal.SIGKILL)
            killed_at.append(time.time())
            assert await router.wait(10) == -signal.SIGKILL
            restarted_at.append(time.time())  # until now no router ran: what the mock accepted
            await router.start()  # meanwhile, the dead one had written
            await router.ready()
        await producing
        await eventually(
            lambda: all_committed(deployment, len(docs)),
            timeout_s=180,
            interval_s=0.5,
            message="every record finished and committed by the router",
        )
        accepted = {c: await mock_sent(deployment, c) for c in CHANNELS}
        verdicts = await metric_sum(provider.metrics_port, "webhook_verdicts_total", "marker")
    finally:
        await router.stop()
        await provider.stop()
        logs = router.log_records()
    dead = len(await read_topic(deployment.stack, deployment.topics["dlq"]))
    resolutions = resolutions_logged(logs)
    resolutions["leases_settled_by_webhooks"] = verdicts["lease"]
    reported = await first_reported_sent(deployment)
    unknown_at_kill = [
        sum(
            1
            for c in CHANNELS
            for a in accepted[c]
            if a["accepted_at"] < restart and reported.get((a["message_id"], c), math.inf) >= kill
        )
        for kill, restart in zip(killed_at, restarted_at, strict=True)
    ]
    outcome = Outcome(
        accepted={c: Counter(a["message_id"] for a in accepted[c]) for c in CHANNELS},
        out_of_order={c: _out_of_order(docs, accepted[c]) for c in CHANNELS},
        dead_lettered=dead,
        resolutions=resolutions,
        unknown_at_kill=unknown_at_kill,
    )
    return outcome, docs


async def first_reported_sent(deployment: Deployment) -> dict[tuple[str, str], float]:
    """When the router first reported each (message, channel) SENT (Unix time). The webhooks
    role's SENT comes with the provider's timestamp, in whole seconds; the router's has
    microseconds."""
    first: dict[tuple[str, str], float] = {}
    topic = deployment.topics["message_status_updates"]
    for record in await read_topic(deployment.stack, topic):
        update = orjson.loads(record.value)
        if update["new_status"] != "SENT" or "." not in update["timestamp"]:
            continue
        at = datetime.fromisoformat(update["timestamp"]).timestamp()
        pair = (update["message_id"], update["channel"])
        first[pair] = min(first.get(pair, math.inf), at)
    return first


async def _at_least(count: Any, wanted: int) -> bool:
    return int(await count) >= wanted


def _out_of_order(docs: list[dict[str, Any]], accepted: list[dict[str, Any]]) -> int:
    """Conversations whose messages were first accepted in another order than produced."""
    produced: dict[int, list[str]] = {}
    for d in docs:
        produced.setdefault(d["conversation_id"], []).append(d["message_id"])
    first: dict[int, list[str]] = {}
    for a in accepted:
        ids = first.setdefault(a["conversation_id"], [])
        if a["message_id"] not in ids:
            ids.append(a["message_id"])
    return sum(1 for c, ids in produced.items() if first.get(c, []) != ids[: len(first.get(c, []))])


@pytest.mark.parametrize("latency_ms", [0.0, 50.0])
async def test_router_killed_three_times_sends_each_message_once_per_channel(
    deployment: Deployment,
    tmp_path: Path,
    record_summary: Callable[[str], None],
    latency_ms: float,
) -> None:
    outcome, docs = await kill_three_times(deployment, tmp_path, latency_ms)

    ids = {d["message_id"] for d in docs}
    twice = {c: sum(1 for n in outcome.accepted[c].values() if n > 1) for c in CHANNELS}
    lost = {c: len(ids - set(outcome.accepted[c])) for c in CHANNELS}
    record_summary(
        f"router kill -9 x{KILLS}, {len(docs)} messages x 2 channels, mock latency "
        f"{latency_ms:g} ms: sent twice {twice}, lost {lost}, dead-lettered "
        f"{outcome.dead_lettered}, out of order {outcome.out_of_order}; accepted by the "
        f"provider, not yet reported SENT by the router at each kill: {outcome.unknown_at_kill}; "
        f"in doubt: {dict(outcome.resolutions)}"
    )
    assert twice == dict.fromkeys(CHANNELS, 0)
    assert lost == dict.fromkeys(CHANNELS, 0)
    assert outcome.dead_lettered == 0
    assert outcome.out_of_order == dict.fromkeys(CHANNELS, 0)
    assert sum(outcome.unknown_at_kill) > 0  # the kills did leave sends of unknown outcome
