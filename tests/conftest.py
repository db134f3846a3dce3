"""Shared fixtures: the backing services (`stack`) and per-test isolation.

Every isolation fixture is a factory or a value that owns its teardown: a unique Kafka topic,
consumer group, Redis key prefix, PostgreSQL database or S3 bucket, removed after the test.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from miniopy_async.api import Minio

from chat4all_workers.background import Background
from chat4all_workers.db.migrate import migrate
from chat4all_workers.kafka.admin import wait_for_leaders
from harness.deployment import TOPIC_FIELDS, Deployment, remove_bucket
from harness.stack import StackEndpoints, unique_name
from tests.cluster import Cluster, cluster_running
from tests.stack import StackUnavailableError, discover

TOPIC_READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def stack() -> Iterator[StackEndpoints]:
    """The backing services, found or started once per session; unreachable is an error."""
    with contextlib.ExitStack() as exit_stack:
        try:
            endpoints = discover(exit_stack)
        except StackUnavailableError as exc:
            pytest.fail(f"backing services unavailable: {exc}", pytrace=False)
        yield endpoints


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node Kafka cluster of the test module's own (tests/cluster.py), in a temporary
    DEVSTACK_HOME on free ports; a test that kills a node starts it again before it ends."""
    with cluster_running(tmp_path_factory.mktemp("kafka-cluster")) as running:
        yield running


@pytest.fixture
def consumer_group() -> str:
    """A Kafka consumer group id no other test uses."""
    return unique_name("group")


class TopicFactory:
    """`await kafka_topic(partitions=1, prefix="test")` creates a uniquely named topic and waits
    until every partition has a leader; `many` creates several in one request (a deployment's
    ten topics: one round trip, not ten). Every topic created is deleted by `close`."""

    def __init__(self, stack: StackEndpoints) -> None:
        self._stack = stack
        self._admin: AIOKafkaAdminClient | None = None
        self.created: list[str] = []

    async def __call__(self, partitions: int = 1, *, prefix: str = "test") -> str:
        (name,) = await self.many([prefix], partitions=partitions)
        return name

    async def many(self, prefixes: Sequence[str], *, partitions: int) -> list[str]:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self._stack.kafka_bootstrap)
            await self._admin.start()
        names = [unique_name(prefix) for prefix in prefixes]
        response = await self._admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        )
        self.created += names
        for topic, error_code, *rest in response.topic_errors:
            if error_code != 0:
                raise RuntimeError(f"create topic {topic}: error {error_code} {rest}")
        await wait_for_leaders(self._admin, dict.fromkeys(names, partitions), TOPIC_READY_TIMEOUT_S)
        return names

    async def close(self) -> None:
        if self._admin is not None:
            try:
                if self.created:
                    await self._admin.delete_topics(self.created)
            finally:
                await self._admin.close()


@pytest.fixture
async def kafka_topic(stack: StackEndpoints) -> AsyncIterator[TopicFactory]:
    """A `TopicFactory`: unique topics, deleted after the test."""
    topics = TopicFactory(stack)
    try:
        yield topics
    finally:
        await topics.close()


@pytest.fixture
async def redis_prefix(stack: StackEndpoints) -> AsyncIterator[str]:
    """A key prefix (`test-<hex>:`) no other test uses; its keys are deleted after the test."""
    prefix = unique_name("test") + ":"
    yield prefix
    client = aioredis.from_url(stack.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def pg_database(stack: StackEndpoints) -> AsyncIterator[str]:
    """The DSN of a fresh, empty database; dropped (WITH (FORCE)) after the test."""
    name = unique_name("test").replace("-", "_")
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def s3_client(stack: StackEndpoints) -> AsyncIterator[Minio]:
    """A miniopy-async client for the stack's S3; its HTTP session is closed after the test."""
    async with stack.s3_client() as client:
        yield client


@pytest.fixture
async def s3_bucket(stack: StackEndpoints) -> AsyncIterator[str]:
    """A fresh bucket; its objects and the bucket itself are removed after the test."""
    name = unique_name("test")
    async with stack.s3_client() as client:
        await client.make_bucket(name)
        try:
            yield name
        finally:
            await remove_bucket(client, name)


@pytest.fixture
async def deployment(
    stack: StackEndpoints,
    kafka_topic: TopicFactory,
    pg_database: str,
    redis_prefix: str,
    s3_bucket: str,
) -> Deployment:
    """A whole isolated deployment: every topic (4 partitions), a migrated database, a Redis
    prefix, a bucket, a consumer-group prefix and free ports (see harness/deployment.Deployment)."""
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    names = await kafka_topic.many([n.replace("_", "-") for n in TOPIC_FIELDS], partitions=4)
    topics = dict(zip(TOPIC_FIELDS, names, strict=True))
    return Deployment(
        stack=stack,
        database_url=pg_database,
        redis_prefix=redis_prefix,
        bucket=s3_bucket,
        group=unique_name("group"),
        topics=topics,
    )


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own, which names each test's group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the backing services must say so (`stack` marker): `make check` runs
    `-m "not stack"` and must start nothing.

    Under `--dist loadgroup` (`make test`), a test of an `xdist_group` that pytest-xdist did not
    group is marked to fail at its setup, before its fixtures start anything (`_UNGROUPED`)."""
    unmarked = [
        item.nodeid
        for item in items
        if "stack" in getattr(item, "fixturenames", ()) and item.get_closest_marker("stack") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests use the stack without the `stack` marker: {unmarked}")
    if getattr(config.option, "loadgroup", False):  # set in pytest-xdist's workers only
        for item in items:
            marks = item.iter_markers("xdist_group")
            group = "_".join(sorted({str(_group_name(m)) for m in marks}))
            if group and not item.nodeid.endswith(f"@{group}"):
                item.stash[_UNGROUPED] = group


def _group_name(mark: pytest.Mark) -> object:
    """An `xdist_group` mark's group, as pytest-xdist reads it."""
    return mark.args[0] if mark.args else mark.kwargs.get("name", "default")


# A grouped test that pytest-xdist left ungrouped, and its group. pytest-xdist groups by adding
# `@group` to the test's id; pytest 9.2 no longer takes that change, and nothing else says so:
# the `faults` tests then ran on every worker, each worker starting a stack of its own (three
# Kafkas, PostgreSQLs and S3s beside the shared ones, on two cores). pytest-dev/pytest-xdist#1386.
# pyproject.toml pins pytest below 9.2 meanwhile; tests/infra/test_xdist_groups.py checks it.
_UNGROUPED = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    group = item.stash.get(_UNGROUPED, None)
    if group is not None:
        pytest.fail(
            f"--dist loadgroup did not group this test with the rest of group {group!r} "
            f"(pytest {pytest.__version__}: pytest-dev/pytest-xdist#1386); `make venv` installs "
            "the pytest that pyproject.toml pins",
            pytrace=False,
        )


_SUMMARIES: list[str] = []
_SUMMARY = "scenario summary"


@pytest.fixture
def record_summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line for the end-of-run summary (fault scenarios say what they counted). It
    rides the test's report, so under pytest-xdist the controller prints the workers' lines."""

    def record(line: str) -> None:
        request.node.user_properties.append((_SUMMARY, line))

    return record


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # every phase carries the lines so far: take them once
        _SUMMARIES.extend(str(v) for k, v in report.user_properties if k == _SUMMARY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SUMMARIES:
        terminalreporter.section("scenario summaries")
        for line in _SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    """The owner of batch sends (background.py), for a test that builds a batcher itself."""
    async with Background() as owner:
        yield owner


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """The test process's garbage collector as it was, for tests of `chat4all-workers run`'s
    settings (chat4all_workers/collector.py): pytest's own objects stay collectable."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
