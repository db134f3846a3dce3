"""What every consuming role shares (consuming.py): its consumer group, the engine run for the role
(ready, dead-lettering, outages retried in place) and the dead-lettering of a record it consumed,
against real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat4all_workers.backoff import OUTAGE_CAP_S
from chat4all_workers.config import Settings
from chat4all_workers.consuming import consume, consumer_group, dead_letter_record
from chat4all_workers.errors import InvalidRecordError, PermanentError
from chat4all_workers.kafka import handling
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, Resources, open_resources
from chat4all_workers.role import RoleContext
from harness.deployment import free_port, settings_for
from harness.stack import StackEndpoints
from harness.topics import read_topic
from tests.conftest import TopicFactory
from tests.support import metric_value, produce

pytestmark = pytest.mark.timeout(60)

ContextFactory = Callable[..., Awaitable[RoleContext]]


@pytest.fixture
async def role_context(
    stack: StackEndpoints, kafka_topic: TopicFactory, consumer_group: str
) -> AsyncIterator[ContextFactory]:
    """`await role_context(name, topic=...)`: a RoleContext in drain mode over a real Kafka
    producer, dead-lettering to a topic of the test's own; closed after the test."""
    async with contextlib.AsyncExitStack() as opened:

        async def make(name: str = "example") -> RoleContext:
            dlq = await kafka_topic(prefix="dlq")
            settings = settings_for(
                stack, consumer_group=consumer_group, topics={"dlq": dlq}, kafka={"linger_ms": 0}
            )
            metrics = Metrics()
            resources = await opened.enter_async_context(
                open_resources(settings, metrics, frozenset({Need.KAFKA}))
            )
            return RoleContext(name, settings, resources, metrics, asyncio.Event(), drain=True)

        yield make


def headers_of(record: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in record.headers}


# -- the consumer group ---------------------------------------------------------------------------


def test_consumer_group_is_the_roles_own_unless_the_settings_name_one() -> None:
    settings = Settings.load({}, {"kafka": {"consumer_group": "c4a", "groups": {"router": "old"}}})
    metrics = Metrics()
    resources = Resources(settings, metrics)

    def ctx(name: str) -> RoleContext:
        return RoleContext(name, settings, resources, metrics, asyncio.Event())

    assert consumer_group(ctx("merge")) == "c4a-merge"
    assert consumer_group(ctx("router")) == "old"


# -- dead_letter_record ---------------------------------------------------------------------------


@pytest.mark.stack
async def test_dead_letter_record_copies_the_record_with_the_reason_in_headers(
    stack: StackEndpoints, role_context: ContextFactory
) -> None:
    ctx = await role_context("router")
    record = ConsumedRecord(
        "message_processing", 3, 120, b"conversation:42", b'{"original": true}', (), 0
    )

    await dead_letter_record(
        ctx,
        record,
        reason="whatsapp: HTTP 400 (131026): undeliverable",
        error_type="provider_rejected",
        attempts=2,
        extra_headers=[("dlq.provider_code", b"131026")],
    )

    (dead,) = await read_topic(stack, ctx.settings.topics.dlq)
    headers = headers_of(dead)
    assert (dead.key, dead.value) == (b"conversation:42", b'{"original": true}')  # byte for byte
    assert headers["dlq.reason"] == "whatsapp: HTTP 400 (131026): undeliverable"
    assert headers["dlq.error_type"] == "provider_rejected"
    assert headers["dlq.source"] == "router"
    assert (headers["dlq.original_topic"], headers["dlq.original_partition"]) == (
        "message_processing",
        "3",
    )
    assert (headers["dlq.original_offset"], headers["dlq.attempts"]) == ("120", "2")
    assert headers["dlq.provider_code"] == "131026"


@pytest.mark.stack
async def test_dead_letter_record_counts_it_by_source_and_error_type(
    role_context: ContextFactory,
) -> None:
    ctx = await role_context("router")
    record = ConsumedRecord("message_processing", 0, 0, None, b"{}", (), 0)

    await dead_letter_record(ctx, record, reason="bad", error_type="invalid_record")
    await dead_letter_record(ctx, record, reason="bad", error_type="invalid_record")

    counted = {"source": "router", "reason": "invalid_record"}
    assert metric_value(ctx.metrics.dlq_messages, counted) == 2


# -- consume --------------------------------------------------------------------------------------


@pytest.mark.stack
async def test_consume_dead_letters_permanent_errors_counting_an_invalid_record_untried(
    stack: StackEndpoints, kafka_topic: TopicFactory, role_context: ContextFactory
) -> None:
    topic = await kafka_topic()
    await produce(stack, topic, [(b"k1", b"not json"), (b"k1", b"refused"), (b"k1", b"fine")])
    ctx = await role_context()
    handled: list[bytes | None] = []

    async def handler(record: ConsumedRecord) -> None:
        if record.value == b"not json":
            raise InvalidRecordError("value: not JSON")
        if record.value == b"refused":
            raise PermanentError("refused for good")
        handled.append(record.value)

    await asyncio.wait_for(consume(ctx, topic=topic, handler=handler), 30)

    dead = {r.value: headers_of(r) for r in await read_topic(stack, ctx.settings.topics.dlq)}
    assert handled == [b"fine"]
    assert (dead[b"not json"]["dlq.error_type"], dead[b"not json"]["dlq.attempts"]) == (
        "invalid_record",
        "0",
    )
    assert (dead[b"refused"]["dlq.error_type"], dead[b"refused"]["dlq.attempts"]) == (
        "permanent",
        "1",
    )


@pytest.mark.stack
async def test_consume_retries_a_record_in_place_through_an_outage(
    stack: StackEndpoints, kafka_topic: TopicFactory, role_context: ContextFactory
) -> None:
    topic = await kafka_topic()
    await produce(stack, topic, [(b"k1", b"first"), (b"k1", b"second")])
    ctx = await role_context()
    attempts: list[bytes | None] = []

    async def handler(record: ConsumedRecord) -> None:
        attempts.append(record.value)
        if len(attempts) == 1:  # a backing service unreachable, for real: a refused connection
            _, writer = await asyncio.open_connection("127.0.0.1", free_port())
            writer.close()

    await asyncio.wait_for(consume(ctx, topic=topic, handler=handler), 30)

    assert attempts == [b"first", b"first", b"second"]  # retried, in order, nothing skipped
    assert await read_topic(stack, ctx.settings.topics.dlq) == []


@pytest.mark.stack
async def test_consume_retries_through_an_outage_at_most_the_outage_cap_apart(
    stack: StackEndpoints,
    kafka_topic: TopicFactory,
    role_context: ContextFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However long the outage, the record is tried again within OUTAGE_CAP_S of the service's
    return (a provider's refusal backs off up to 30 s; an outage must not inherit that)."""
    topic = await kafka_topic()
    await produce(stack, topic, [(b"k1", b"first")])
    ctx = await role_context()
    outage_retries = 12  # with the provider's schedule, the later delays would reach 30 s
    waits: list[float | None] = []

    async def no_wait(event: asyncio.Event, *, timeout_s: float | None) -> bool:
        waits.append(timeout_s)  # the delay the engine chose, not slept
        return event.is_set()

    monkeypatch.setattr(handling, "wait_event", no_wait)

    async def handler(record: ConsumedRecord) -> None:
        if len(waits) < outage_retries:
            raise ConnectionRefusedError(111, "Connection refused")

    await asyncio.wait_for(consume(ctx, topic=topic, handler=handler), 30)

    assert len(waits) == outage_retries
    assert all(wait is not None and 0 <= wait <= OUTAGE_CAP_S for wait in waits), waits


@pytest.mark.stack
async def test_consume_marks_the_role_ready_and_reports_the_engines_stats(
    stack: StackEndpoints, kafka_topic: TopicFactory, role_context: ContextFactory
) -> None:
    topic = await kafka_topic()
    await produce(stack, topic, [(b"k1", b"one"), (b"k2", b"two")])
    ctx = await role_context()

    async def handler(record: ConsumedRecord) -> None:
        return None

    await asyncio.wait_for(consume(ctx, topic=topic, handler=handler), 30)

    assert ctx.reporter is not None
    report = ctx.reporter()
    assert report.engine is not None
    assert report.engine.finished_total == 2
    assert ctx.is_ready  # once its partitions were assigned
