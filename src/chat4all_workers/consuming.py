"""What every Kafka-consuming role shares: the engine wired to the role's context, and the
dead-lettering of a record it consumed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from chat4all_workers.errors import InvalidRecordError, PermanentError
from chat4all_workers.kafka.backlog import warn_of_reread
from chat4all_workers.kafka.consumer import ConsumerEngine
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.handling import Handler, PermanentHandler
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.resources import TRANSIENT_ERRORS
from chat4all_workers.role import RoleContext, RoleReport

log = logging.getLogger(__name__)


def consumer_group(ctx: RoleContext) -> str:
    """Each role is its own consumer group, so roles scale and rebalance independently
    (`kafka.groups` may name one, e.g. the original workers' group)."""
    return ctx.settings.kafka.group_for(ctx.name)


async def consume(
    ctx: RoleContext,
    *,
    topic: str,
    handler: Handler,
    on_permanent: PermanentHandler | None = None,
    max_in_flight: int | None = None,
    report: Callable[[], RoleReport] | None = None,
) -> None:
    """Run the consumer engine for this role until it stops; ready once partitions are assigned.

    Without `on_permanent`, a PermanentError dead-letters the record (`dead_letter_record`).
    A backing service that is unreachable (TRANSIENT_ERRORS) retries the record in place, like
    a RetryableError: the record stays owned and uncommitted, the role keeps running.
    The role's report (`ctx.report`) is the engine's stats, with what `report` adds (the
    router's channels).
    """

    async def dead_letter_it(record: ConsumedRecord, exc: PermanentError) -> None:
        # A record that breaks its format was never tried on anything: 0 attempts.
        attempts = 0 if isinstance(exc, InvalidRecordError) else 1
        await dead_letter_record(
            ctx, record, reason=str(exc), error_type=exc.error_type, attempts=attempts
        )

    group = consumer_group(ctx)
    await warn_of_reread(ctx.settings, role=ctx.name, group=group, topic=topic)
    engine = ConsumerEngine(
        settings=ctx.settings.kafka,
        topics=[topic],
        group_id=group,
        role=ctx.name,
        handler=handler,
        outages=TRANSIENT_ERRORS,
        on_permanent=on_permanent or dead_letter_it,
        metrics=ctx.metrics,
        max_in_flight=max_in_flight,
        drain=ctx.drain,
        shutdown=ctx.shutdown,
    )
    own = report or RoleReport
    ctx.report(lambda: dataclasses.replace(own(), engine=engine.stats()))

    async def announce_ready() -> None:
        await engine.ready.wait()
        ctx.mark_ready()

    async with asyncio.TaskGroup() as tasks:
        announcer = tasks.create_task(announce_ready())
        try:
            await engine.run(ctx.stopping)
        finally:
            announcer.cancel()


async def dead_letter_record(
    ctx: RoleContext,
    record: ConsumedRecord,
    *,
    reason: str,
    error_type: str,
    attempts: int = 1,
    extra_headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send the record, byte for byte, to the DLQ with the reason. Bad input is expected, so it
    is logged as a warning, never an error."""
    log.warning(
        "dead-lettering %s-%d@%d (%s): %s",
        record.topic,
        record.partition,
        record.offset,
        error_type,
        reason,
    )
    await dead_letter(
        ctx.resources.kafka(),
        dlq_topic=ctx.settings.topics.dlq,
        value=record.value,
        key=record.key,
        source=ctx.name,
        reason=reason,
        error_type=error_type,
        attempts=attempts,
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
        extra_headers=extra_headers,
        metrics=ctx.metrics,
    )
