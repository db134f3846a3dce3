"""Helpers for tests of the package: settings pointed at the test's own isolated resources."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from miniopy_async.api import Minio
from miniopy_async.deleteobjects import DeleteObject

from chat4all_workers.config import Settings, TopicSettings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.kafka.admin import wait_for_leaders
from chat4all_workers.roles import load_settings
from tests.stack import StackEndpoints, unique_name

REPO = Path(__file__).resolve().parent.parent
# What `make run` gives the webhooks role and the mocks (the Makefile's WHATSAPP_APP_SECRET).
DEV_APP_SECRET = "dev-mock-app-secret"


def settings_for(
    stack: StackEndpoints,
    *,
    database_url: str | None = None,
    redis_prefix: str = "",
    bucket: str | None = None,
    consumer_group: str | None = None,
    topics: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> Settings:
    """Settings for one test: the stack's addresses, the test's database, key prefix, bucket,
    consumer group and topic names, plus any section overrides (`router={"max_attempts": 2}`).
    The environment is NOT read, so a developer's shell cannot change a test's outcome."""
    doc: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap, "session_timeout_ms": 6000},
        "postgres": {"url": database_url or stack.database_url},
        "redis": {"url": stack.redis_url, "key_prefix": redis_prefix},
        "s3": {
            "endpoint": stack.s3_endpoint,
            "access_key": stack.s3_access_key,
            "secret_key": stack.s3_secret_key,
            "secure": stack.s3_secure,
        },
        "observability": {"metrics_port": 0, "metrics_host": "127.0.0.1"},
        "supervisor": {"shutdown_timeout_s": 10.0},
    }
    if consumer_group:
        doc["kafka"]["consumer_group"] = consumer_group
    if bucket:
        doc["s3"]["bucket"] = bucket
    if topics:
        doc["topics"] = dict(topics)
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return load_settings({}, doc)


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_value(metric: Any, labels: dict[str, str]) -> float:
    """A counter's or gauge's value (aioprometheus types `get` as any metric's value); KeyError
    when nothing was recorded under `labels`."""
    value = metric.get(labels)
    assert isinstance(value, int | float), f"not a counter or gauge value: {value!r}"
    return float(value)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    message: str = "condition",
) -> None:
    """Wait until `check()` is true, or fail with `message` after `timeout_s` (no blind sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


def occurrences(line: dict[str, Any]) -> int:
    """How many times a log line's condition occurred: the line and the repeats it stood for
    (`repeats_suppressed`); a summary line (`repeats_summary`) stands for its repeats only."""
    repeats = line.get("repeats_suppressed", 0)
    assert isinstance(repeats, int)
    return repeats + (0 if line.get("repeats_summary") else 1)


# The `[topics]` settings, so a topic added there is created for every test deployment too.
TOPIC_FIELDS = tuple(f.name for f in dataclasses.fields(TopicSettings))


@dataclass(frozen=True)
class Deployment:
    """Everything one test owns, as a worker process or an embedded supervisor would see it:
    its own topics (all of them), consumer-group prefix, Redis key prefix, migrated database and
    bucket, and free ports for the operations server, the channel mocks and the webhooks."""

    stack: StackEndpoints
    database_url: str
    redis_prefix: str
    bucket: str
    group: str
    topics: dict[str, str]
    metrics_port: int = field(default_factory=free_port)
    whatsapp_port: int = field(default_factory=free_port)
    instagram_port: int = field(default_factory=free_port)
    webhooks_port: int = field(default_factory=free_port)

    def sections(self, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
        webhooks = f"http://127.0.0.1:{self.webhooks_port}/webhooks"
        doc: dict[str, dict[str, Any]] = {
            "observability": {"metrics_port": self.metrics_port, "metrics_host": "127.0.0.1"},
            # The mocks call the deployment's webhooks role back, signing as Meta would with
            # the app secrets the role checks: the production path, as `make run` runs it.
            "mocks": {
                "whatsapp_port": self.whatsapp_port,
                "instagram_port": self.instagram_port,
                "whatsapp_webhook_url": f"{webhooks}/whatsapp",
                "instagram_webhook_url": f"{webhooks}/instagram",
            },
            # `--roles all` includes the webhooks role: never on the default port of a `make run`.
            "webhooks": {"port": self.webhooks_port},
            "whatsapp": {
                "base_url": f"http://127.0.0.1:{self.whatsapp_port}",
                "access_token": "test-token",
                "phone_number_id": "1000",
                "app_secret": DEV_APP_SECRET,
            },
            "instagram": {
                "base_url": f"http://127.0.0.1:{self.instagram_port}",
                "access_token": "test-token",
                "user_id": "2000",
                "app_secret": DEV_APP_SECRET,
            },
        }
        for name, values in overrides.items():
            doc.setdefault(name, {}).update(values)
        return doc

    def settings(self, **overrides: dict[str, Any]) -> Settings:
        return settings_for(
            self.stack,
            database_url=self.database_url,
            redis_prefix=self.redis_prefix,
            bucket=self.bucket,
            consumer_group=self.group,
            topics=self.topics,
            **self.sections(**overrides),
        )

    def environ(self, **overrides: dict[str, Any]) -> dict[str, str]:
        """The same deployment as environment variables, for `chat4all-workers` subprocesses."""
        env = {
            **self.stack.as_environ(),
            "DATABASE_URL": self.database_url,
            "MINIO_BUCKET": self.bucket,
            "KAFKA_CONSUMER_GROUP": self.group,
            "CHAT4ALL_REDIS_KEY_PREFIX": self.redis_prefix,
            "CHAT4ALL_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CHAT4ALL_CONFIG": str(REPO / "supervisor.toml"),
        }
        env.update({f"CHAT4ALL_TOPICS_{k.upper()}": v for k, v in self.topics.items()})
        for section, values in self.sections(**overrides).items():
            for key, value in values.items():
                env[_env_name(section, key)] = _env_text(value)
        return env


@contextlib.asynccontextmanager
async def isolated_deployment(
    stack: StackEndpoints, *, partitions: int = 4, label: str = "scratch"
) -> AsyncIterator[Deployment]:
    """A whole Deployment outside pytest (benchmarks, load runs): every topic with `partitions`
    partitions, a fresh migrated database, a bucket and a Redis key prefix, all named
    `{label}-<hex>`; removed afterwards (topics, database, bucket and every key under the prefix,
    e.g. the router's 24 h dedup markers)."""
    run = f"{label}-{uuid.uuid4().hex[:10]}"
    database = run.replace("-", "_")
    topics = {name: f"{run}-{name.replace('_', '-')}" for name in TOPIC_FIELDS}
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    pg = await asyncpg.connect(stack.database_url)
    s3 = stack.s3_client()
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(pg.close)
        await pg.execute(f'CREATE DATABASE "{database}"')
        drop = f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
        cleanup.push_async_callback(pg.execute, drop)
        database_url = urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{database}"))
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        await admin.start()
        cleanup.push_async_callback(admin.close)
        await admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics.values()]
        )
        cleanup.push_async_callback(admin.delete_topics, list(topics.values()))
        await wait_for_leaders(admin, dict.fromkeys(topics.values(), partitions))
        await cleanup.enter_async_context(s3)
        await s3.make_bucket(run)
        cleanup.push_async_callback(remove_bucket, s3, run)
        cleanup.push_async_callback(_delete_keys, stack, f"{run}:")
        yield Deployment(
            stack=stack,
            database_url=database_url,
            redis_prefix=f"{run}:",
            bucket=run,
            group=unique_name("group"),
            topics=topics,
        )


async def remove_bucket(s3: Minio, bucket: str) -> None:
    """Empty the bucket, then remove it."""
    objects = [
        DeleteObject(obj.object_name)
        async for obj in s3.list_objects(bucket, recursive=True)
        if obj.object_name is not None
    ]
    if objects:
        errors = [error async for error in s3.remove_objects(bucket, objects)]
        if errors:
            raise RuntimeError(f"could not empty bucket {bucket}: {errors}")
    await s3.remove_bucket(bucket)


async def _delete_keys(stack: StackEndpoints, prefix: str) -> None:
    client = aioredis.from_url(stack.redis_url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def _env_name(section: str, key: str) -> str:
    settings = load_settings({})
    for row in settings.describe():
        if row.key == f"{section}.{key}":
            return row.env
    raise KeyError(f"{section}.{key} is not a setting")


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class WorkerProcess:
    """`chat4all-workers run` as a real OS process (for signals, kill -9 and multi-process tests).

    Its JSON log goes to a file; `ready()` waits for /readyz 200 and fails with the log's tail if
    the process exits first.
    """

    def __init__(self, roles: str, env: dict[str, str], log_path: Path) -> None:
        self.roles = roles
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.metrics_port = int(env.get("METRICS_PORT", "8000"))

    async def start(self) -> WorkerProcess:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CHAT4ALL_", "ROLES", "KAFKA_", "MINIO_", "OUTBOX_"))
        }
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chat4all_workers",
                "run",
                "--roles",
                self.roles,
                env={**base, **self.env},
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log.close()
        return self

    async def ready(self, timeout_s: float = 60.0) -> None:
        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await eventually(answers, timeout_s=timeout_s, interval_s=0.2, message="worker ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                records.append(orjson.loads(line))
        return records


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
    recipient with 503; a recipient containing "invalid" gets a permanent 400.
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
            return web.json_response({"error": {"message": "try later"}}, status=503)
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


async def partitions_of(stack: StackEndpoints, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    finally:
        await admin.close()


async def read_topic(stack: StackEndpoints, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in the topic, from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(stack, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=500)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


@contextlib.contextmanager
def own_redis(
    port: int, workdir: Path, *, password: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server this test owns, so it can stop it without disturbing anyone (and, with
    `password`, one that requires it: the shared one does not)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
    options |= {"dir": str(workdir)} | ({"requirepass": password} if password else {})
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
