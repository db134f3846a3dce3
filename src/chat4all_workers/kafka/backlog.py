"""What a consumer group without committed offsets is about to re-read, counted before it consumes.

A role switched over from the platform's original workers joins a group of its own
(`<consumer_group>-<role>`) unless `kafka.groups` names the old one. A group with no committed
offset starts where `auto_offset_reset` says; with `earliest` that is the start of the topic's
retention (7 days by default), and every record older than the router's dedup window
(`delivery.dedup_ttl_s`) is no longer recognised as done: it is processed, i.e. sent to the
customer, again. Nothing in the records says so, so the process says it, once, before the engine
fetches anything.

The count costs one metadata request, one OffsetFetch for the group and one ListOffsets per
broker for each of beginning, end and the window's boundary (`offsets_for_times`): a few
milliseconds once connected; with connecting, 0.11 s per consuming role at start-up on the
2-core development machine (12 partitions, median of 10).
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from chat4all_workers.config import Settings
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.admin import new_admin, topic_partitions

log = logging.getLogger(__name__)
_CHECK_TIMEOUT_S = 10.0


@frozen
class Backlog:
    """One group's view of one topic, for the partitions it has no committed offset on."""

    group: str
    topic: str
    partitions: int  # of the topic
    uncommitted: int  # partitions without a committed offset
    records: int  # records those partitions hold: what `earliest` re-reads
    older_than_window: int  # of those, records older than the dedup window
    took_s: float  # what counting cost


async def uncommitted_backlog(
    settings: Settings, *, group: str, topic: str, window_s: float, now_ms: int | None = None
) -> Backlog:
    """Count, per partition without a committed offset, the records from the beginning to the
    end and those before `now - window_s` (by record timestamp)."""
    started = time.perf_counter()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    admin = new_admin(settings, "backlog")
    offsets = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-backlog",
        request_timeout_ms=settings.kafka.request_timeout_ms,
        enable_auto_commit=False,
    )
    await admin.start()
    try:
        await offsets.start()
        try:
            # Listed first: describing a missing topic would create it on a broker that
            # auto-creates topics.
            exists = topic in await admin.list_topics()
            tps = await topic_partitions(admin, topic) if exists else []
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            fresh = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
            records = older = 0
            if fresh:
                begins = await offsets.beginning_offsets(fresh)
                ends = await offsets.end_offsets(fresh)
                boundary_ms = now_ms - int(window_s * 1000)
                found = await offsets.offsets_for_times(dict.fromkeys(fresh, boundary_ms))
                for tp in fresh:
                    # No record at or after the boundary: every record is older than it.
                    hit = found.get(tp)
                    boundary = ends[tp] if hit is None else max(hit.offset, begins[tp])
                    records += ends[tp] - begins[tp]
                    older += boundary - begins[tp]
        finally:
            await offsets.stop()
    finally:
        await admin.close()
    return Backlog(
        group=group,
        topic=topic,
        partitions=len(tps),
        uncommitted=len(fresh),
        records=records,
        older_than_window=older,
        took_s=time.perf_counter() - started,
    )


async def warn_of_reread(settings: Settings, *, role: str, group: str, topic: str) -> None:
    """Log ONE warning when `group` is about to re-read records older than the dedup window
    (only `auto_offset_reset = earliest` does: `latest` skips what is there). A failure to count
    is logged and ignored: the engine meets the same broker next and waits out an outage."""
    if settings.kafka.auto_offset_reset != "earliest":
        return
    window_s = settings.delivery.dedup_ttl_s
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            backlog = await uncommitted_backlog(
                settings, group=group, topic=topic, window_s=window_s
            )
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning(
            "%s: could not count what consumer group %s would re-read on %s (%s: %s); starting",
            role,
            group,
            topic,
            type(exc).__name__,
            exc,
        )
        return
    log.debug("%s: backlog check of %s on %s took %.3fs", role, group, topic, backlog.took_s)
    if backlog.older_than_window == 0:
        return
    log.warning(
        "%s: consumer group %s has no committed offset on %d of the %d partitions of %s, and "
        "kafka.auto_offset_reset is earliest: it will re-read %d records from the beginning, "
        "%d of them older than the dedup window (delivery.dedup_ttl_s = %ds), which are processed "
        "(the router: sent to customers) again. To continue from the previous workers' "
        'offsets, name their group: [kafka] groups = { %s = "<group>" } '
        "(CHAT4ALL_KAFKA_GROUPS=%s=<group>, e.g. message_router_group); to skip the backlog, "
        "set kafka.auto_offset_reset = latest (KAFKA_AUTO_OFFSET_RESET=latest). "
        "See docs/migrating.md",
        role,
        group,
        backlog.uncommitted,
        backlog.partitions,
        topic,
        backlog.records,
        backlog.older_than_window,
        window_s,
        role,
        role,
    )
