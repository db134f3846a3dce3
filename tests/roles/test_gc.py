"""The gc role against real PostgreSQL and S3 (SeaweedFS)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from miniopy_async.api import Minio

from chat4all_workers.app import App, run_once
from chat4all_workers.config import Settings
from chat4all_workers.db import files as files_db
from chat4all_workers.db.migrate import migrate
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources
from chat4all_workers.roles.gc import GcReport, collect_garbage
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from tests.roles.uploads import object_keys, seed_upload
from tests.support import metric_value

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

FRESH = timedelta(hours=1)
OLD = timedelta(hours=48)


@dataclass
class GcEnv:
    settings: Settings
    conn: asyncpg.Connection
    s3: Minio
    bucket: str

    def with_gc(self, **values: Any) -> Settings:
        return self.settings.replace(gc=values)

    async def upload(self, status: str, age: timedelta, **kwargs: Any) -> uuid.UUID:
        chunks = [os.urandom(1024), os.urandom(512)]
        return await seed_upload(
            self.conn, self.s3, self.bucket, chunks, status=status, age=age, **kwargs
        )

    async def state(self, upload_id: uuid.UUID) -> tuple[str, int, int]:
        """(status, chunk rows, chunk objects)."""
        status = await self.conn.fetchval("SELECT status FROM files WHERE id = $1", upload_id)
        rows = await self.conn.fetchval(
            "SELECT count(*) FROM file_chunks WHERE file_id = $1", upload_id
        )
        objects = await object_keys(self.s3, self.bucket, f"chunks/{upload_id}/")
        return str(status), int(rows), len(objects)


@pytest.fixture
async def env(
    stack: StackEndpoints, pg_database: str, s3_client: Minio, s3_bucket: str
) -> AsyncIterator[GcEnv]:
    settings = settings_for(
        stack,
        database_url=pg_database,
        bucket=s3_bucket,
        gc={"retention_hours": 24.0, "batch_size": 2},
        files={"merging_stuck_minutes": 60.0},
    )
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        yield GcEnv(settings, conn, s3_client, s3_bucket)
    finally:
        await conn.close()


async def gc_pass(settings: Settings, metrics: Metrics | None = None) -> GcReport:
    metrics = metrics or Metrics()
    async with open_resources(settings, metrics, frozenset({Need.POSTGRES, Need.S3})) as res:
        return await collect_garbage(settings, res.postgres(), res.s3_client(), metrics)


async def test_gc_cleans_exactly_the_stale_uploads(env: GcEnv) -> None:
    stale = [
        await env.upload("PENDING", OLD),
        await env.upload("UPLOADING", timedelta(hours=30)),
        await env.upload("MERGING", timedelta(hours=2)),
    ]
    kept = {
        await env.upload("PENDING", FRESH): "PENDING",
        await env.upload("UPLOADING", FRESH): "UPLOADING",
        await env.upload("MERGING", timedelta(minutes=10)): "MERGING",
        await env.upload("COMPLETED", OLD): "COMPLETED",
        await env.upload("FAILED", OLD): "FAILED",
    }
    active = await env.upload("UPLOADING", OLD)
    await env.conn.execute(
        "UPDATE file_chunks SET uploaded_at = now() WHERE file_id = $1 AND chunk_number = 2",
        active,
    )
    kept[active] = "UPLOADING"

    await run_once(env.settings, "gc")

    for upload_id in stale:
        assert await env.state(upload_id) == ("FAILED", 0, 0)
    for upload_id, status in kept.items():
        assert await env.state(upload_id) == (status, 2, 2)
    error = await env.conn.fetchval("SELECT error FROM files WHERE id = $1", stale[0])
    assert error.startswith("abandoned upload")


async def test_gc_concurrent_passes_do_the_work_once(env: GcEnv) -> None:
    stale = [await env.upload("PENDING", OLD) for _ in range(5)]
    metrics = [Metrics(), Metrics()]

    reports = await asyncio.gather(*(gc_pass(env.settings, m) for m in metrics))

    cleaned = [u for report in reports for u in report.abandoned]
    assert sorted(cleaned) == sorted(stale)
    assert (
        sum(
            metric_value(m.uploads_cleaned, labels)
            for m in metrics
            for labels, _ in m.uploads_cleaned.get_all()
        )
        == 5
    )
    for upload_id in stale:
        assert await env.state(upload_id) == ("FAILED", 0, 0)


async def test_gc_pass_returns_at_once_while_another_holds_the_lock(env: GcEnv) -> None:
    stale = await env.upload("PENDING", OLD)
    assert await files_db.try_lock_gc(env.conn)
    try:
        report = await gc_pass(env.settings)
    finally:
        await files_db.unlock_gc(env.conn)

    assert not report.ran
    assert await env.state(stale) == ("PENDING", 2, 2)


async def test_gc_dry_run_reports_and_changes_nothing(env: GcEnv) -> None:
    stale = await env.upload("UPLOADING", OLD)
    fresh = await env.upload("UPLOADING", FRESH)

    report = await gc_pass(env.with_gc(dry_run=True))

    assert report.dry_run
    assert report.abandoned == {stale: "UPLOADING"}
    assert (report.chunk_objects_deleted, report.chunk_rows_deleted) == (2, 2)
    assert await env.state(stale) == ("UPLOADING", 2, 2)
    assert await env.state(fresh) == ("UPLOADING", 2, 2)


async def test_gc_leaves_a_stuck_merge_that_still_holds_its_lock(env: GcEnv) -> None:
    merging = await env.upload("MERGING", timedelta(hours=3))
    assert await files_db.try_lock_merge(env.conn, merging)
    try:
        report = await gc_pass(env.settings)
    finally:
        await files_db.unlock_merge(env.conn, merging)

    assert report.abandoned == {}
    assert await env.state(merging) == ("MERGING", 2, 2)


async def test_gc_finishes_the_cleanup_of_an_interrupted_pass(env: GcEnv) -> None:
    leftover = await env.upload("FAILED", OLD)
    await env.conn.execute(
        "UPDATE files SET error = 'abandoned upload (was PENDING)' WHERE id = $1", leftover
    )
    merge_failed = await env.upload("FAILED", OLD)
    await env.conn.execute(
        "UPDATE files SET error = 'checksum mismatch' WHERE id = $1", merge_failed
    )

    report = await gc_pass(env.settings)

    assert report.resumed == [leftover]
    assert await env.state(leftover) == ("FAILED", 0, 0)
    assert await env.state(merge_failed) == ("FAILED", 2, 2)


async def test_gc_aborts_old_incomplete_multipart_uploads(env: GcEnv) -> None:
    uploader = env.s3.multipart_uploader(env.bucket, "files/crashed/merge.bin")
    await uploader.upload_part(os.urandom(1024), 1)

    report = await gc_pass(env.with_gc(retention_hours=0.0))

    assert report.multipart_uploads_aborted == 1
    listing = await env.s3._list_multipart_uploads(env.bucket)
    assert listing.uploads == []


async def test_gc_counter_exists_at_0_once_its_schedule_is_armed(env: GcEnv) -> None:
    async with App(env.settings, roles=["gc"], serve_http=False) as app:
        await app.wait_ready()

        assert metric_value(app.metrics.uploads_cleaned, {}) == 0  # a series before any pass
