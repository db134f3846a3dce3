"""The `merge` role: turns an upload's chunks into one object and announces it.

For each `file_merge_requests` record (key `upload_id`), under a per-upload lock (a PostgreSQL
advisory lock, so a rebalance that briefly gives the same upload to two workers cannot merge it
twice at once):

1. read the file; COMPLETED -> finish any interrupted cleanup and emit nothing; FAILED -> nothing;
2. move it to MERGING;
3. verify that chunks 1..total_chunks exist, exactly, as `file_chunks` rows and as S3 objects,
   with matching sizes (and the declared file size, when there is one);
4. merge to `files/{upload_id}/{sanitised filename}`: server-side `compose_object` when every
   chunk but the last is at least 5 MiB, otherwise a streamed multipart upload with bounded
   memory; the file's SHA-256, when `files.checksum_sha256` is set, is checked while reading the
   data once, before the merged object becomes visible;
5. emit `file_upload_completed` with a presigned GET URL and wait for Kafka's acknowledgement;
6. mark the file COMPLETED (file_size, storage_key, completed_at: the same instant as the event);
7. delete the chunk objects, then the `file_chunks` rows.

A failed check (missing or extra chunks, size or checksum mismatch) marks the file FAILED with the
reason in `files.error`, keeps every chunk for inspection, and dead-letters the request
(`dlq.source=merge`). Transient trouble (S3, PostgreSQL, Kafka) retries the whole request.

Crash windows (the offset is committed only after the handler finished, so a crash means the
request is redelivered and the steps above run again):

- before 5: the merge is redone; the merged object is overwritten with the same bytes; a streamed
  merge may leave an incomplete multipart upload, which the `gc` role aborts.
- between 5 and 6 (after Kafka acknowledged the event, before the UPDATE committed): the redelivery
  merges again and emits a SECOND completion event with a newer URL and completed_at. This is the
  one duplicate window, one SQL statement wide; consumers key on upload_id. Marking COMPLETED
  before emitting would instead lose the event in the same window, which is worse.
- between 6 and 7: the redelivery finds COMPLETED, emits nothing and finishes the cleanup.
- between FAILED and the DLQ record: the redelivery finds FAILED and does nothing; the reason is
  still in `files.error`, only the DLQ copy is missing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import orjson

from chat4all_workers.config import Settings
from chat4all_workers.consuming import consume
from chat4all_workers.db import files as files_db
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.formats.wire import INTEGER, present, read_record
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.logging import log_context
from chat4all_workers.resources import TRANSIENT_ERRORS, Need, Resources
from chat4all_workers.role import RoleContext, RoleSpec
from chat4all_workers.storage import merge as s3merge
from chat4all_workers.storage.s3 import chunk_key, file_key
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class MergeSettings:
    """`[merge]`: how many merges at once, and how they stream."""

    SECTION: ClassVar[str] = "merge"

    # Merges running at once per process; each streaming merge holds about two parts in memory.
    max_concurrent: int = 4
    # Part size of a streamed (multipart) merge; S3 requires at least 5 MiB for all but the last.
    stream_part_size_bytes: int = field(
        default=8 * 1024 * 1024, metadata={"min": 5 * 1024 * 1024, "max": 5 * 1024**3}
    )
    # How much is read from S3 (and hashed) at a time.
    read_block_bytes: int = 1024 * 1024


_STUCK_REFRESH_S = 30.0

_MAX_LISTED = 20
# Checking walks every chunk number on the loop; a request for 2**30 chunks must not freeze it.
_MAX_CHUNKS = 100_000
_MAX_FILENAME_CHARS = 4096


class UnknownUploadError(PermanentError):
    error_type = "unknown_upload"


class MergeRejectedError(PermanentError):
    """The chunks do not make the file the upload declared; the file is FAILED."""

    error_type = "merge_rejected"


@frozen
class MergeRequest:
    upload_id: uuid.UUID
    filename: str | None
    total_chunks: int


def parse_request(value: bytes | None) -> MergeRequest:
    """The request a record carries, or InvalidRecordError naming every field that is wrong:
    `upload_id` (UUID), `total_chunks` (1 to 2**31 - 1: the `files.total_chunks` column),
    `filename` (a string, or absent/null; the file row's own name is the one used), and
    `timestamp` (RFC 3339 with offset, or absent/null)."""
    fields = read_record(value)
    upload_id = fields.uuid("upload_id")
    total = fields.integer("total_chunks", bounds=(1, INTEGER[1]))
    filename = fields.text(
        "filename", required=False, max_chars=_MAX_FILENAME_CHARS, allow_empty=True
    )
    fields.timestamp("timestamp", required=False)
    fields.done()
    return MergeRequest(uuid.UUID(present(upload_id)), filename, present(total))


class Merger:
    """The handler of one merge role instance; holds only what it was given."""

    def __init__(self, settings: Settings, resources: Resources) -> None:
        self._settings = settings
        self._resources = resources
        self._bucket = settings.s3.bucket

    async def handle(self, record: ConsumedRecord) -> None:
        request = parse_request(record.value)
        with log_context(upload_id=str(request.upload_id)):
            await self._handle(request)

    async def _handle(self, request: MergeRequest) -> None:
        async with self._resources.postgres().acquire() as conn:
            if not await files_db.try_lock_merge(conn, request.upload_id):
                raise RetryableError(f"upload {request.upload_id} is being merged elsewhere")
            try:
                await self._merge(conn, request)
            finally:
                # asyncpg's connection reset also drops advisory locks, should this fail.
                await files_db.unlock_merge(conn, request.upload_id)

    async def _merge(self, conn: asyncpg.Connection, request: MergeRequest) -> None:
        upload_id = request.upload_id
        current = await files_db.get_file(conn, upload_id)
        if current is None:
            raise UnknownUploadError(f"no file row for upload {upload_id}")
        with log_context(conversation_id=current.conversation_id, user_id=current.uploader_id):
            if current.status == "COMPLETED":
                log.info("upload %s is already COMPLETED; replay ignored", upload_id)
                await self._remove_chunks(conn, upload_id)
                return
            file = await files_db.start_merging(conn, upload_id)
            if file is None:
                log.info("upload %s is %s; merge request ignored", upload_id, current.status)
                return
            try:
                chunks = await self._verified_chunks(conn, file, request)
                key = file_key(str(upload_id), file.filename)
                await self._write(key, chunks, file)
            except PermanentError as exc:
                await files_db.mark_failed(conn, upload_id, str(exc))
                raise
            completed_at = datetime.now(UTC)
            size = sum(c.size for c in chunks)
            await self._announce(file, key, size, completed_at)
            await files_db.mark_completed(
                conn, upload_id, file_size=size, storage_key=key, completed_at=completed_at
            )
            log.info("upload %s merged into %s (%d bytes)", upload_id, key, size)
            await self._remove_chunks(conn, upload_id)

    async def _verified_chunks(
        self, conn: asyncpg.Connection, file: files_db.FileRow, request: MergeRequest
    ) -> list[s3merge.SourceChunk]:
        total = request.total_chunks
        if file.total_chunks is not None and file.total_chunks != total:
            raise MergeRejectedError(
                f"request says {total} chunks, the upload declared {file.total_chunks}"
            )
        if total > _MAX_CHUNKS:
            raise MergeRejectedError(f"request says {total} chunks; at most {_MAX_CHUNKS} merge")
        expected = range(1, total + 1)
        rows = {row.chunk_number: row for row in await files_db.chunk_rows(conn, file.id)}
        objects = await s3merge.list_sizes(
            self._resources.s3_client(), self._bucket, f"chunks/{file.id}/"
        )
        keys = {n: chunk_key(str(file.id), n) for n in expected}
        problems = [
            _numbers("missing chunk rows", [n for n in expected if n not in rows]),
            _numbers("extra chunk rows", sorted(n for n in rows if n > total)),
            _numbers("missing chunk objects", [n for n in expected if keys[n] not in objects]),
            _names("extra chunk objects", sorted(set(objects) - set(keys.values()))),
            _numbers(
                "chunk sizes differ between rows and objects",
                [
                    n
                    for n in expected
                    if n in rows and keys[n] in objects and rows[n].chunk_size != objects[keys[n]]
                ],
            ),
        ]
        reasons = [p for p in problems if p]
        if not reasons:
            size = sum(objects[keys[n]] for n in expected)
            if file.file_size is not None and file.file_size != size:
                reasons.append(
                    f"chunks add up to {size} bytes, the upload declared {file.file_size}"
                )
        if reasons:
            raise MergeRejectedError("; ".join(reasons))
        return [
            s3merge.SourceChunk(keys[n], objects[keys[n]], rows[n].checksum_sha256)
            for n in expected
        ]

    async def _write(
        self, key: str, chunks: Sequence[s3merge.SourceChunk], file: files_db.FileRow
    ) -> None:
        merge = self._settings.section(MergeSettings)
        job = s3merge.MergeJob(
            bucket=self._bucket,
            key=key,
            chunks=chunks,
            content_type=file.mime_type,
            expected_sha256=file.checksum_sha256,
            block_bytes=merge.read_block_bytes,
            part_size_bytes=merge.stream_part_size_bytes,
        )
        await s3merge.merge(self._resources.s3_client(), job)

    async def _announce(
        self, file: files_db.FileRow, key: str, size: int, completed_at: datetime
    ) -> None:
        try:
            url = await self._resources.s3_client().presigned_get_object(
                self._bucket,
                key,
                expires=timedelta(seconds=self._settings.files.download_url_expiry_s),
            )
        except s3merge.S3_ERRORS as exc:
            raise RetryableError(f"presigning {key} failed: {exc!r}") from exc
        event: dict[str, Any] = {
            "upload_id": str(file.id),
            "file_id": str(file.id),
            "conversation_id": file.conversation_id,
            "uploader_id": file.uploader_id,
            "filename": file.filename,
            "file_size": size,
            "mime_type": file.mime_type,
            "storage_key": key,
            "download_url": url,
            "completed_at": completed_at.isoformat().replace("+00:00", "Z"),
        }
        await self._resources.kafka().send(
            OutgoingRecord(
                self._settings.topics.file_upload_completed,
                orjson.dumps(event),
                key=str(file.id).encode(),
            )
        )

    async def _remove_chunks(self, conn: asyncpg.Connection, upload_id: uuid.UUID) -> None:
        await s3merge.remove_prefix(
            self._resources.s3_client(), self._bucket, f"chunks/{upload_id}/"
        )
        await files_db.delete_chunk_rows(conn, upload_id)


def _numbers(what: str, numbers: Sequence[int]) -> str:
    if not numbers:
        return ""
    shown = ", ".join(str(n) for n in numbers[:_MAX_LISTED])
    more = f" and {len(numbers) - _MAX_LISTED} more" if len(numbers) > _MAX_LISTED else ""
    return f"{what}: {shown}{more}"


def _names(what: str, names: Sequence[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return f"{what}: {', '.join(names[:_MAX_LISTED])}{more}"


async def run(ctx: RoleContext) -> None:
    merger = Merger(ctx.settings, ctx.resources)
    async with asyncio.TaskGroup() as tasks:
        watcher = tasks.create_task(_watch_stuck(ctx))
        try:
            await consume(
                ctx,
                topic=ctx.settings.topics.file_merge_requests,
                handler=merger.handle,
                max_in_flight=ctx.settings.section(MergeSettings).max_concurrent,
            )
        finally:
            watcher.cancel()


async def _watch_stuck(ctx: RoleContext) -> None:
    """Keep `files_stuck_merging` current, so an alert sees merges nobody is finishing."""
    pool = ctx.resources.postgres()
    while not ctx.stopping.is_set():
        try:
            stuck = await files_db.count_stuck_merging(
                pool, minutes=ctx.settings.files.merging_stuck_minutes
            )
            ctx.metrics.files_stuck_merging.set({}, stuck)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not count stuck merges: %s", exc)
        await wait_event(ctx.stopping, timeout_s=_STUCK_REFRESH_S)


ROLE = RoleSpec(
    name="merge",
    needs=frozenset({Need.KAFKA, Need.POSTGRES, Need.S3}),
    run=run,
    settings=MergeSettings,
)
