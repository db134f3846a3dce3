"""A deployment of one's own on the shared stack, as a worker process or an embedded supervisor
would see it: its own topics (all of them), consumer-group prefix, Redis key prefix, migrated
database and bucket, and free ports; settings pointed at those isolated resources, so that runs
(tests on several pytest-xdist workers, a benchmark beside them) never see each other's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from miniopy_async.api import Minio
from miniopy_async.deleteobjects import DeleteObject

from chat4all_workers.config import Settings, TopicSettings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.kafka.admin import wait_for_leaders
from chat4all_workers.roles import load_settings
from harness import REPO
from harness.stack import StackEndpoints, unique_name

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
    """A TCP port for a server a test starts, kept from everyone else for a minute.

    A port merely free when picked could be taken before the server binds it, seconds later
    (a process starting on a busy machine): by another test's pick, or as the local port of some
    client's outgoing connection. It happened: a mock exited 1 with `address already in use` for
    a port picked by this function half a minute before. So the port is left in TIME_WAIT (a
    connection to it accepted and closed from the server's side): for the next 60 s the kernel
    hands it neither to an outgoing connection nor to another `bind(0)`, while a server that
    binds it by number with SO_REUSEADDR, as the servers tests start on these ports do (ours,
    asyncio's and aiohttp's, redis-server), gets it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
            client.recv(1)  # the close has reached the client (end of stream)
        return int(address[1])


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
            # Tests send to recipients of their own who never wrote first: no windows (a test
            # that wants them asks for `windows = "enforce"`), and no users writing at start-up
            # (supervisor.toml's demo recipients) into a test's topics.
            "mocks": {
                "whatsapp_port": self.whatsapp_port,
                "instagram_port": self.instagram_port,
                "whatsapp_webhook_url": f"{webhooks}/whatsapp",
                "instagram_webhook_url": f"{webhooks}/instagram",
                "windows": "open",
                "open_windows_for": [],
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
