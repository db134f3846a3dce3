"""The `gc` role: cleans uploads nobody will finish, on a schedule (default daily 02:00 UTC).

An upload is abandoned when it sat in PENDING or UPLOADING with no activity (row or chunk) for
`gc.retention_hours`, or in MERGING for `files.merging_stuck_minutes` while no merge holds its lock.
Each is marked FAILED ("abandoned upload ...") first, then its chunk objects and `file_chunks`
rows are deleted: a merge that starts meanwhile sees FAILED and gives up instead of finding its
chunks gone, and a pass that crashes after marking leaves rows the next pass still finds
(FAILED, abandoned, chunks recorded) and finishes. Incomplete S3 multipart uploads older than the
retention (what a crashed streaming merge leaves) are aborted when the server can list them.

One pass at a time across all processes: the pass holds a PostgreSQL advisory lock on a dedicated
connection; a pass that cannot take it returns at once and says so. `gc.dry_run` reports what a
pass would do and changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import asyncpg
from miniopy_async.api import Minio

from chat4all_workers import config_checks
from chat4all_workers.config import Settings, env
from chat4all_workers.db import files as files_db
from chat4all_workers.frozen import frozen
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need
from chat4all_workers.role import RoleContext, RoleSpec
from chat4all_workers.storage import merge as s3merge

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class GcSettings:
    """`[gc]`: what counts as abandoned, and when gc runs."""

    SECTION: ClassVar[str] = "gc"

    retention_hours: float = field(default=24.0, metadata=env("GC_RETENTION_HOURS"))
    batch_size: int = field(default=100, metadata=env("GC_BATCH_SIZE"))
    schedule: str = field(default="0 2 * * *", metadata={"check": config_checks.cron})
    dry_run: bool = False


@dataclass
class GcReport:
    """What one pass did (or, in a dry run, would do)."""

    dry_run: bool
    # False when another pass held the lock: this one did nothing.
    ran: bool = True
    # Uploads marked FAILED (or that would be), by id, with the status they were in.
    abandoned: dict[uuid.UUID, str] = field(default_factory=dict)
    # Uploads whose chunks were cleaned after an earlier, interrupted pass.
    resumed: list[uuid.UUID] = field(default_factory=list)
    chunk_objects_deleted: int = 0
    chunk_rows_deleted: int = 0
    # None when the S3 server cannot list multipart uploads.
    multipart_uploads_aborted: int | None = 0


async def collect_garbage(
    settings: Settings, pool: asyncpg.Pool, s3: Minio, metrics: Metrics
) -> GcReport:
    """One GC pass; see the module docstring."""
    gc = settings.section(GcSettings)
    report = GcReport(dry_run=gc.dry_run)
    async with pool.acquire() as conn:
        if not await files_db.try_lock_gc(conn):
            log.info("another gc pass is running; this one does nothing")
            report.ran = False
            return report
        try:
            await _pass(settings, conn, s3, metrics, report)
        finally:
            await files_db.unlock_gc(conn)
    verb = "would clean" if gc.dry_run else "cleaned"
    log.info(
        "gc %s %d abandoned uploads (%d chunk objects, %d chunk rows), resumed %d, "
        "aborted %s incomplete multipart uploads",
        verb,
        len(report.abandoned),
        report.chunk_objects_deleted,
        report.chunk_rows_deleted,
        len(report.resumed),
        report.multipart_uploads_aborted,
    )
    return report


async def _pass(
    settings: Settings, conn: asyncpg.Connection, s3: Minio, metrics: Metrics, report: GcReport
) -> None:
    gc = settings.section(GcSettings)
    bucket = settings.s3.bucket
    retention_s = gc.retention_hours * 3600.0
    stuck_s = settings.files.merging_stuck_minutes * 60.0
    batch = max(1, gc.batch_size)

    after: uuid.UUID | None = None
    while True:
        if gc.dry_run:
            page = await files_db.stale_uploads(
                conn, retention_s=retention_s, merging_stuck_s=stuck_s, after=after, limit=batch
            )
            claimed, after = page, (page[-1].id if page else None)
        else:
            claimed, after = await files_db.fail_stale_uploads(
                conn, retention_s=retention_s, merging_stuck_s=stuck_s, after=after, limit=batch
            )
        for upload in claimed:
            report.abandoned[upload.id] = upload.status
            await _clean(conn, s3, bucket, upload.id, report, dry_run=gc.dry_run)
            if not gc.dry_run:
                metrics.uploads_cleaned.inc({})
        if after is None:
            break

    resume_after: uuid.UUID | None = None
    while True:
        leftovers = await files_db.abandoned_with_chunks(conn, after=resume_after, limit=batch)
        if not leftovers:
            break
        for upload_id in leftovers:
            if upload_id in report.abandoned:
                continue  # a dry run leaves them; a real pass already cleaned them
            report.resumed.append(upload_id)
            await _clean(conn, s3, bucket, upload_id, report, dry_run=gc.dry_run)
        resume_after = leftovers[-1]

    cutoff = datetime.now(UTC) - timedelta(hours=gc.retention_hours)
    report.multipart_uploads_aborted = await s3merge.abort_multipart_uploads(
        s3, bucket, initiated_before=cutoff, dry_run=gc.dry_run
    )


async def _clean(
    conn: asyncpg.Connection,
    s3: Minio,
    bucket: str,
    upload_id: uuid.UUID,
    report: GcReport,
    *,
    dry_run: bool,
) -> None:
    prefix = f"chunks/{upload_id}/"
    if dry_run:
        report.chunk_objects_deleted += len(await s3merge.list_sizes(s3, bucket, prefix))
        report.chunk_rows_deleted += len(await files_db.chunk_rows(conn, upload_id))
        log.info(
            "gc dry run: would clean abandoned upload %s",
            upload_id,
            extra={"fields": {"upload_id": str(upload_id)}},
        )
        return
    report.chunk_objects_deleted += await s3merge.remove_prefix(s3, bucket, prefix)
    report.chunk_rows_deleted += await files_db.delete_chunk_rows(conn, upload_id)


async def run_once(ctx: RoleContext) -> None:
    await collect_garbage(
        ctx.settings, ctx.resources.postgres(), ctx.resources.s3_client(), ctx.metrics
    )


def arm(ctx: RoleContext) -> None:
    """`uploads_cleaned_total` exists (at 0) from the moment passes are scheduled: a dashboard
    or an alert on it has a series before the first pass (a daily one may be 24 h away)."""
    ctx.metrics.uploads_cleaned.add({}, 0)


ROLE = RoleSpec(
    name="gc",
    needs=frozenset({Need.POSTGRES, Need.S3}),
    run_once=run_once,
    schedule=lambda s: s.section(GcSettings).schedule,
    settings=GcSettings,
    arm=arm,
)
