"""Helpers only tests use: metric and log readings, a fake channel API, records produced and
offsets committed by hand, a Redis server of a test's own.

What the benchmarks need too (the stack's endpoints, a deployment of one's own, worker processes,
reading a topic back, waiting on a condition) lives in harness/, which bench/ may import.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from harness.deployment import free_port
from harness.stack import StackEndpoints


def metric_value(metric: Any, labels: dict[str, str]) -> float:
    """A counter's or gauge's value (aioprometheus types `get` as any metric's value); KeyError
    when nothing was recorded under `labels`."""
    value = metric.get(labels)
    assert isinstance(value, int | float), f"not a counter or gauge value: {value!r}"
    return float(value)


def occurrences(line: dict[str, Any]) -> int:
    """How many times a log line's condition occurred: the line and the repeats it stood for
    (`repeats_suppressed`); a summary line (`repeats_summary`) stands for its repeats only."""
    repeats = line.get("repeats_suppressed", 0)
    assert isinstance(repeats, int)
    return repeats + (0 if line.get("repeats_summary") else 1)


@dataclass
class ChannelCall:
    channel: str
    recipient: str
    text: str
    body: dict[str, Any]


class FakeChannelApi:
    """A loopback HTTP server that answers like the WhatsApp Cloud API and the Instagram
    Messaging API (the outside world is the one thing tests fake), recording every call.

    `latency_s` delays each answer; `fail_first[recipient] = n` answers the first n calls for that
    recipient with a failure that proves the message was not taken (WhatsApp's 131057, account
    in maintenance: retried as transient); a recipient containing "invalid" gets a permanent 400.
    """

    def __init__(self, *, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.fail_first: dict[str, int] = {}
        self.calls: list[ChannelCall] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def texts(self, channel: str | None = None) -> list[str]:
        return [c.text for c in self.calls if channel is None or c.channel == channel]

    async def __aenter__(self) -> FakeChannelApi:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.json()
        whatsapp = body.get("messaging_product") == "whatsapp"
        channel = "whatsapp" if whatsapp else "instagram"
        recipient = str(body.get("to") if whatsapp else body.get("recipient", {}).get("id"))
        if whatsapp:
            text = str(body.get("text", {}).get("body") or body.get("document", {}).get("link", ""))
        else:
            message = body.get("message", {})
            text = str(message.get("text") or message.get("attachment", {}))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if "invalid" in recipient:
            return web.json_response(
                {"error": {"message": "invalid recipient", "code": 131026}}, status=400
            )
        if self.fail_first.get(recipient, 0) > 0:
            self.fail_first[recipient] -= 1
            error = {"message": "(#131057) Account in maintenance mode", "code": 131057}
            return web.json_response({"error": error}, status=500)
        self.calls.append(ChannelCall(channel, recipient, text, body))
        provider_id = f"{channel}-{len(self.calls)}"
        if whatsapp:
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": recipient, "wa_id": recipient}],
                    "messages": [{"id": f"wamid.{provider_id}"}],
                }
            )
        return web.json_response({"recipient_id": recipient, "message_id": f"mid.{provider_id}"})


Answer = tuple[int, Any, dict[str, str]]  # (HTTP status, JSON body, headers)


class ScriptedApi:
    """A loopback Send API (`POST /{version}/{account}/messages`, as WhatsApp's and Instagram's)
    answering each request with the next scripted answer, recording every request body.

    `answers` is the script: (status, JSON body, headers) per request, in order; a request past
    the end of the script gets a 599 (so a test that sends more than it planned fails loudly).
    Helpers build Meta's answers: `accepted(...)`, `meta_error(...)`."""

    def __init__(self, answers: Sequence[Answer] = ()) -> None:
        self.answers: list[Answer] = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedApi:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        if not self.answers:
            return web.json_response({"error": {"message": "unscripted request"}}, status=599)
        status, body, headers = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    def accepted(provider_message_id: str, *, channel: str = "whatsapp") -> Answer:
        if channel == "whatsapp":
            return (
                200,
                {"messaging_product": "whatsapp", "messages": [{"id": provider_message_id}]},
                {},
            )
        return 200, {"recipient_id": "1", "message_id": provider_message_id}, {}

    @staticmethod
    def meta_error(
        status: int, code: int | None = None, *, retry_after: str | None = None
    ) -> Answer:
        error: dict[str, Any] = {"message": f"scripted error {code}", "fbtrace_id": "TRACE"}
        if code is not None:
            error["code"] = code
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return status, {"error": error}, headers


async def produce(
    stack: StackEndpoints,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce (key, value) records in order and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def committed_offsets(stack: StackEndpoints, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (-1 where nothing was committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        partitions = sorted(p["partition"] for p in described["partitions"])
        offsets = await admin.list_consumer_group_offsets(group)
        return {
            p: offsets[tp].offset if (tp := TopicPartition(topic, p)) in offsets else -1
            for p in partitions
        }
    finally:
        await admin.close()


async def commit_offsets(
    stack: StackEndpoints, group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Commit `offsets` for `group` as a consumer of that group would (no member joins)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def router_record(conversation: int, content: str) -> tuple[bytes, bytes]:
    """A valid `message_processing` record (key, value) for WhatsApp."""
    value = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "payload": {"type": "text", "content": content},
        "channels": ["whatsapp"],
        "recipients": {"whatsapp": f"+55{conversation:09d}"},
        "created_at": "2026-11-28T10:30:00Z",
    }
    return f"conversation:{conversation}".encode(), orjson.dumps(value)


@contextlib.contextmanager
def own_redis(
    port: int, workdir: Path, *, password: str | None = None, unix_socket: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server this test owns, so it can stop it without disturbing anyone (and, with
    `password`, one that requires it: the shared one does not; with `unix_socket`, one that
    listens there too)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
    options |= {"dir": str(workdir)} | ({"requirepass": password} if password else {})
    options |= {"unixsocket": str(unix_socket)} if unix_socket else {}
    proc = subprocess.Popen(
        [binary, *(arg for name, value in options.items() for arg in (f"--{name}", value))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
