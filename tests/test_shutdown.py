"""SIGTERM drains: in-flight work finishes or is handed back, nothing is committed before it is
done, and the process exits 0 within the shutdown timeout."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from chat4all_workers.app import App
from harness.deployment import Deployment, free_port
from harness.processes import WorkerProcess
from harness.topics import partitions_of, read_topic
from harness.waiting import eventually
from tests.support import FakeChannelApi, committed_offsets, produce

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
        async with App(
            deployment.settings(whatsapp={"base_url": channel.base_url}),
            roles=["router"],
            drain=True,
            serve_http=False,
        ) as app:
            await asyncio.wait_for(app.wait(), 120)

    assert code == 0, worker.log_tail()
    assert elapsed < SHUTDOWN_TIMEOUT_S
    assert len(sent_before_stop) < len(records)  # the stop really interrupted work
    # The drain summary says what the group's offsets say: committed, and handed back.
    (drained,) = drain_lines(worker, "router")
    assert drained["committed_total"] == sum(max(0, n) for n in committed.values())
    assert drained["handed_back"] > 0
    assert (drained["level"], drained["cancelled"]) == ("INFO", 0)
    texts = channel.texts()
    assert sorted(set(texts)) == sorted(orjson.loads(v)["payload"]["content"] for _, v in records)
    assert len(texts) == len(set(texts)), "a message was sent twice"
    assert len(await partitions_of(deployment.stack, topic)) == 4


class HungProvider:
    """A loopback HTTP server that reads each request and never answers (a provider hanging)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self._release = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HungProvider:
        self._server = await asyncio.start_server(self._hang, "127.0.0.1", self.port, backlog=2048)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # keep-alive: every request on the connection hangs
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                await self._release.wait()


async def test_sigterm_with_1000_sends_hung_at_the_provider_exits_0_within_the_deadline(
    deployment: Deployment, tmp_path: Path, record_summary: Callable[[str], None]
) -> None:
    shutdown_timeout_s = 10.0  # a reserve of 2 s, 1 s of it to unwind (1,000 sends: ~0.3 s idle)
    records = [message(c, 0) for c in range(1000)]  # 1000 conversations: all in flight at once
    await produce(deployment.stack, deployment.topics["message_processing"], records)
    async with HungProvider() as provider:
        overrides: dict[str, dict[str, Any]] = {
            "whatsapp": {"base_url": provider.base_url, "timeout_s": 60.0},
            "supervisor": {"shutdown_timeout_s": shutdown_timeout_s},
        }
        worker = WorkerProcess("router", deployment.environ(**overrides), tmp_path / "worker.log")
        await worker.start()
        try:
            await worker.ready()
            await eventually(
                lambda: provider.requests >= 1000, timeout_s=60, message="1000 sends hung"
            )
            began = time.monotonic()
            worker.signal(signal.SIGTERM)
            code = await worker.wait(shutdown_timeout_s + 10)
            elapsed_s = time.monotonic() - began
        finally:
            await worker.stop()

    committed = await committed_offsets(
        deployment.stack, deployment.topics["message_processing"], f"{deployment.group}-router"
    )
    record_summary(
        f"SIGTERM with {provider.requests} sends hung at the provider: exit {code} after "
        f"{elapsed_s:.2f} s (shutdown_timeout_s {shutdown_timeout_s:.0f})"
    )
    assert code == 0, worker.log_tail()
    assert elapsed_s < shutdown_timeout_s + 1.0, f"exited after {elapsed_s:.2f}s"
    assert max(committed.values()) <= 0  # none of the hung sends was committed as done
    # The drain summary is a WARNING: handlers were cancelled at the drain deadline.
    (drained,) = drain_lines(worker, "router")
    assert (drained["level"], drained["committed_total"]) == ("WARNING", 0)
    assert drained["handed_back"] == 1000
    assert drained["cancelled"] >= 1
    (total,) = drain_lines(worker, None)
    assert total["level"] == "WARNING"
    # Cancelled twice if need be (the first one waits for a written request's answer), every
    # handler unwinds in time: no "ignored cancellation", no role stuck.
    assert [r["message"] for r in worker.log_records() if r["level"] == "ERROR"] == []


def drain_lines(worker: WorkerProcess, role: str | None) -> list[dict[str, Any]]:
    """The drain summary's line for `role`, or (None) its total line."""
    event = "drain" if role else "drain_total"
    return [
        line
        for line in worker.log_records()
        if line.get("event") == event and line.get("role") == role
    ]
