"""Hostile requests to the webhooks endpoint: `chat4all-workers run --roles webhooks` as a real
process, fed arbitrary bodies (bytes, JSON, mutated notifications, sizes around the limit),
signatures (right, missing, wrong, another app's, garbage), content types and verification
queries.

Whatever comes, the answer is the one the rules give (413 over the size limit, 401 without the
right signature, 415 for a content type other than JSON, 403 for a verification that is not ours,
200 otherwise), never a 5xx; every 200 that says it dead-lettered the body left exactly one DLQ
record; the process keeps running with no restart, logs nothing above WARNING and no secret.
`WEBHOOK_HOSTILE_EXAMPLES` sets how many examples (lists of up to 8 requests) are tried: 100 by
default, 2,000 in `make soak`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from harness.deployment import Deployment
from harness.processes import WorkerProcess
from harness.topics import partitions_of
from tests.roles.webhook_support import (
    IG_SECRET,
    SECRETS,
    WA_SECRET,
    WA_TOKEN,
    arbitrary_documents,
    mutated_notifications,
)

EXAMPLES = int(os.environ.get("WEBHOOK_HOSTILE_EXAMPLES", "100"))
LIMIT = 65_536  # webhooks.max_body_bytes for this test: big enough to matter, quick to send
T = TypeVar("T")

pytestmark = [pytest.mark.stack, pytest.mark.timeout(max(300, EXAMPLES * 2))]


@dataclass
class Worker:
    process: WorkerProcess
    port: int
    dlq: str
    stack: Any
    dead_lettered: int = 0  # DLQ records the answers so far announced
    examples: int = 0
    answers: Counter[int] = field(default_factory=Counter)

    def url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/{channel}"


@pytest.fixture
async def worker(
    deployment: Deployment, tmp_path: Path, record_summary: Callable[[str], None]
) -> AsyncIterator[Worker]:
    port = deployment.webhooks_port
    env = deployment.environ(
        webhooks={"max_body_bytes": LIMIT},
        whatsapp={"app_secret": WA_SECRET, "verify_token": WA_TOKEN},
        instagram={"app_secret": IG_SECRET},
    )
    process = WorkerProcess("webhooks", env, tmp_path / "worker.log")
    await process.start()
    try:
        await process.ready()
        state = Worker(process, port, deployment.topics["dlq"], deployment.stack)
        yield state
        record_summary(
            f"webhooks hostile input: {state.examples} examples, {state.answers.total()} "
            f"requests, answers {dict(sorted(state.answers.items()))}, "
            f"{state.dead_lettered} bodies dead-lettered"
        )
    finally:
        await process.stop()


@dataclass(frozen=True)
class Request:
    method: str
    channel: str
    body: bytes
    signature: str | None  # the header's value; None: no header
    content_type: str
    query: dict[str, str]

    @property
    def expected(self) -> int:
        if self.method == "GET":
            return 403
        if len(self.body) > LIMIT:
            return 413
        given = (self.signature or "").strip().lower()  # as sent: HTTP trims it, hex has no case
        if given != sign(SECRETS[self.channel], self.body):
            return 401
        if self.content_type.split(";")[0].strip().lower() != "application/json":
            return 415
        return 200


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    channel = draw(st.sampled_from(["whatsapp", "instagram"]))
    if draw(st.integers(0, 9)) == 0:  # a verification GET with whatever query
        names = st.sampled_from(["hub.mode", "hub.verify_token", "hub.challenge", "x"])
        query = draw(st.dictionaries(names, HEADER_TEXT))
        return Request("GET", channel, b"", None, "", query)
    body = draw(
        st.one_of(
            st.binary(max_size=2048),
            # json, not orjson: integers beyond 64 bits are part of what may come
            arbitrary_documents().map(lambda doc: json.dumps(doc).encode()),
            mutated_notifications(channel).map(lambda doc: json.dumps(doc).encode()),
            st.integers(LIMIT - 8, LIMIT + 8).map(lambda n: b" " * n),
        )
    )
    right = sign(SECRETS[channel], body)
    signature = draw(
        st.sampled_from(
            [right, right, right, None, "sha256=" + "0" * 64, right.upper(), right[:-2],
             sign(IG_SECRET if channel == "whatsapp" else WA_SECRET, body)]
        )
        | HEADER_TEXT
    )  # fmt: skip
    content_type = draw(
        st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                         "text/plain", "application/x-www-form-urlencoded"])
    )  # fmt: skip
    return Request("POST", channel, body, signature, content_type, {})


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One example on its own event loop (not the session loop pytest-asyncio keeps)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coro)


async def send(worker: Worker, batch: list[Request]) -> list[tuple[int, dict[str, Any]]]:
    answers = []
    async with aiohttp.ClientSession() as http:
        for request in batch:
            headers = {"Content-Type": request.content_type}
            if request.signature is not None:
                headers[SIGNATURE_HEADER] = request.signature
            async with http.request(
                request.method,
                worker.url(request.channel),
                data=request.body if request.method == "POST" else None,
                params=request.query,
                headers=headers,
            ) as response:
                raw = await response.read()
                summary = (
                    orjson.loads(raw) if response.status == 200 and raw.startswith(b"{") else {}
                )
                answers.append((response.status, summary))
    return answers


async def restarts(worker: Worker) -> int:
    url = f"http://127.0.0.1:{worker.process.metrics_port}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        ready = orjson.loads(await response.read())
    return int(ready["roles"]["webhooks"]["restarts"])


async def dlq_records(worker: Worker) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=worker.stack.kafka_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await partitions_of(worker.stack, worker.dlq))
        return sum(ends.values())
    finally:
        await consumer.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(batch=st.lists(requests(), min_size=1, max_size=8))
def test_webhooks_answer_hostile_requests_with_a_clear_4xx_or_a_dlq_record(
    worker: Worker, batch: list[Request]
) -> None:
    answers = run(send(worker, batch))
    worker.dead_lettered += sum(1 for code, summary in answers if summary.get("dead_lettered"))
    worker.examples += 1
    worker.answers.update(code for code, _ in answers)
    in_dlq = run(dlq_records(worker))

    for request, (code, _) in zip(batch, answers, strict=True):
        assert code == request.expected, (request.method, request.content_type, request.body[:200])
    assert in_dlq == worker.dead_lettered
    assert worker.process.proc is not None
    assert worker.process.proc.returncode is None
    assert run(restarts(worker)) == 0
    loud = [r for r in worker.process.log_records() if r.get("level") in ("ERROR", "CRITICAL")]
    assert loud == [], loud[:3]
    log_text = worker.process.log_path.read_text(errors="replace")
    assert [s for s in (WA_SECRET, IG_SECRET, WA_TOKEN) if s in log_text] == []
