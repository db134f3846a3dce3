"""SIGTERM drains: in-flight work finishes or is handed back, nothing is committed before it is
done, and the process exits 0 within the shutdown timeout."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from chat4all_workers.supervisor import Supervisor
from tests.support import (
    Deployment,
    FakeChannelApi,
    WorkerProcess,
    committed_offsets,
    eventually,
    partitions_of,
    produce,
    read_topic,
)

pytestmark = pytest.mark.stack

SHUTDOWN_TIMEOUT_S = 10.0


def message(conversation: int, n: int) -> tuple[bytes, bytes]:
    body = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "sender_username": "ana",
        "payload": {"type": "text", "content": f"c{conversation}-m{n}"},
        "channels": ["whatsapp"],
        "recipients": {"whatsapp": f"+55119999{conversation:05d}"},
        "created_at": "2026-11-28T10:30:00Z",
    }
    return f"conversation:{conversation}".encode(), orjson.dumps(body)


async def test_sigterm_with_work_in_flight_exits_0_and_commits_only_finished_work(
    deployment: Deployment, tmp_path: Path
) -> None:
    records = [message(c, n) for n in range(10) for c in range(30)]
    await produce(deployment.stack, deployment.topics["message_processing"], records)
    async with FakeChannelApi(latency_s=0.2) as channel:
        overrides: dict[str, dict[str, Any]] = {
            "whatsapp": {"base_url": channel.base_url},
            "supervisor": {"shutdown_timeout_s": SHUTDOWN_TIMEOUT_S},
        }
        worker = WorkerProcess("router", deployment.environ(**overrides), tmp_path / "worker.log")
        await worker.start()
        try:
            await worker.ready()
            await eventually(lambda: len(channel.calls) >= 40, message="sends under way")
            began = time.monotonic()
            worker.signal(signal.SIGTERM)
            code = await worker.wait(SHUTDOWN_TIMEOUT_S + 5)
            elapsed = time.monotonic() - began
        finally:
            await worker.stop()
        sent_before_stop = set(channel.texts())

        # Nothing committed before it was done: every record below a committed offset was sent.
        topic = deployment.topics["message_processing"]
        committed = await committed_offsets(deployment.stack, topic, f"{deployment.group}-router")
        for record in await read_topic(deployment.stack, topic):
            if record.offset < committed.get(record.partition, -1):
                content = orjson.loads(record.value)["payload"]["content"]
                assert content in sent_before_stop, f"{content} committed but never sent"

        # Nothing lost: a second run delivers the rest, and dedup sends nothing twice.
        async with Supervisor(
            deployment.settings(whatsapp={"base_url": channel.base_url}),
            roles=["router"],
            drain=True,
            serve_http=False,
        ) as sup:
            await asyncio.wait_for(sup.wait(), 120)

    assert code == 0, worker.log_tail()
    assert elapsed < SHUTDOWN_TIMEOUT_S
    assert len(sent_before_stop) < len(records)  # the stop really interrupted work
    texts = channel.texts()
    assert sorted(set(texts)) == sorted(orjson.loads(v)["payload"]["content"] for _, v in records)
    assert len(texts) == len(set(texts)), "a message was sent twice"
    assert len(await partitions_of(deployment.stack, topic)) == 4
