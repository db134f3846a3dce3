"""Joining chunk objects into one object, on any S3 API (MinIO in production, SeaweedFS in tests).

Two ways, chosen by the chunk sizes:

- server-side: `compose_object` (UploadPartCopy) when every chunk but the last is at least 5 MiB,
  the minimum S3 part size. No data passes through the worker.
- streaming: otherwise, the chunks are read block by block and re-cut into parts of
  `part_size_bytes` for a multipart upload, so the worker holds about one part in memory,
  never the file.

Both check the SHA-256 of the whole file when one is expected, reading the data exactly once: the
streaming merge hashes what it uploads and aborts the upload before completing it on a mismatch;
the server-side merge hashes the chunks before composing. Either way a mismatch leaves no merged
object behind. S3 trouble is raised as RetryableError (the merge is redone from the start).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime

import aiohttp
from miniopy_async.api import Minio
from miniopy_async.commonconfig import ComposeSource
from miniopy_async.deleteobjects import DeleteObject
from miniopy_async.error import MinioException

from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.frozen import frozen

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Errors of the S3 client or its transport that a later attempt may not meet.
S3_ERRORS: tuple[type[Exception], ...] = (
    MinioException,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)


class ChecksumMismatchError(PermanentError):
    error_type = "checksum_mismatch"


@frozen
class SourceChunk:
    key: str
    size: int
    # SHA-256 recorded for this chunk at upload time, checked when the data is read anyway.
    sha256: str | None = None


@frozen(kw_only=True)
class MergeJob:
    """The chunks, in order, joined into the object `key` of `bucket`."""

    bucket: str
    key: str
    chunks: Sequence[SourceChunk]
    content_type: str | None
    expected_sha256: str | None  # the whole file's: a mismatch leaves no object behind
    block_bytes: int  # each chunk is read in blocks of at most this
    part_size_bytes: int  # the parts of a streaming merge (at least MIN_PART_SIZE)


def can_compose(sizes: Sequence[int]) -> bool:
    """Server-side merge is possible when every part but the last meets the S3 minimum."""
    return bool(sizes) and all(size >= MIN_PART_SIZE for size in sizes[:-1])


async def merge(client: Minio, job: MergeJob) -> None:
    """The job done the way its chunk sizes allow: server-side, else streaming."""
    if can_compose([c.size for c in job.chunks]):
        await merge_server_side(client, job)
    else:
        await merge_streaming(client, job)


async def list_sizes(client: Minio, bucket: str, prefix: str) -> dict[str, int]:
    """Every object under `prefix`, with its size."""
    found: dict[str, int] = {}
    try:
        async for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
            if obj.object_name is not None:
                found[obj.object_name] = int(obj.size or 0)
    except S3_ERRORS as exc:
        raise RetryableError(f"listing s3://{bucket}/{prefix} failed: {exc!r}") from exc
    return found


async def merge_server_side(client: Minio, job: MergeJob) -> None:
    bucket, key = job.bucket, job.key
    if job.expected_sha256 is not None:
        hasher = hashlib.sha256()
        async with contextlib.aclosing(_read_chunks(client, job)) as blocks:
            async for block in blocks:
                hasher.update(block)
        _check_digest(hasher, job.expected_sha256)
    try:
        await client.compose_object(
            bucket,
            key,
            [ComposeSource(bucket, chunk.key) for chunk in job.chunks],
            metadata={"Content-Type": job.content_type or DEFAULT_CONTENT_TYPE},
        )
    except S3_ERRORS as exc:
        raise RetryableError(f"compose of s3://{bucket}/{key} failed: {exc!r}") from exc


async def merge_streaming(client: Minio, job: MergeJob) -> None:
    """Multipart upload of the chunks' concatenation; memory stays near one part."""
    bucket, key = job.bucket, job.key
    part_size = max(job.part_size_bytes, MIN_PART_SIZE)
    hasher = hashlib.sha256()
    uploader = client.multipart_uploader(
        bucket, key, content_type=job.content_type or DEFAULT_CONTENT_TYPE
    )
    completed = False
    try:
        buffer = bytearray()
        part_number = 0
        async with contextlib.aclosing(_read_chunks(client, job)) as blocks:
            async for block in blocks:
                hasher.update(block)
                buffer += block
                if len(buffer) >= part_size:
                    part_number += 1
                    with memoryview(buffer) as view:
                        part = bytes(view[:part_size])
                    del buffer[:part_size]
                    await _upload_part(uploader, part, part_number)
                    del part
        if buffer or part_number == 0:
            part_number += 1
            await _upload_part(uploader, bytes(buffer), part_number)
        del buffer
        if job.expected_sha256 is not None:
            _check_digest(hasher, job.expected_sha256)
        try:
            await uploader.complete()
        except S3_ERRORS as exc:
            raise RetryableError(f"completing s3://{bucket}/{key} failed: {exc!r}") from exc
        completed = True
    finally:
        if not completed:
            await _abort_quietly(uploader, bucket, key)


async def remove_prefix(client: Minio, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix`; returns how many there were."""
    keys = list(await list_sizes(client, bucket, prefix))
    if not keys:
        return 0
    try:
        errors = [e async for e in client.remove_objects(bucket, [DeleteObject(k) for k in keys])]
    except S3_ERRORS as exc:
        raise RetryableError(f"deleting s3://{bucket}/{prefix} failed: {exc!r}") from exc
    if errors:
        raise RetryableError(f"deleting s3://{bucket}/{prefix} failed: {errors[0]!r}")
    return len(keys)


async def abort_multipart_uploads(
    client: Minio, bucket: str, *, initiated_before: datetime, dry_run: bool = False
) -> int | None:
    """Abort incomplete multipart uploads started before the cutoff (a crashed streaming merge
    leaves one). None when the server does not list multipart uploads."""
    aborted = 0
    key_marker: str | None = None
    upload_id_marker: str | None = None
    while True:
        try:
            # miniopy-async exposes ListMultipartUploads only as this internal method.
            page = await client._list_multipart_uploads(
                bucket, key_marker=key_marker, upload_id_marker=upload_id_marker
            )
        except MinioException as exc:
            log.warning(
                "s3 server cannot list multipart uploads (%r); incomplete uploads are not "
                "cleaned (configure a bucket lifecycle rule instead)",
                exc,
            )
            return None
        for upload in page.uploads:
            if upload.initiated_time is None or upload.initiated_time >= initiated_before:
                continue
            if upload.upload_id is None:
                continue
            if not dry_run:
                try:
                    await client._abort_multipart_upload(
                        bucket, upload.object_name, upload.upload_id
                    )
                except S3_ERRORS as exc:
                    raise RetryableError(f"aborting {upload.object_name}: {exc!r}") from exc
            aborted += 1
        if not page.is_truncated:
            return aborted
        key_marker, upload_id_marker = page.next_key_marker, page.next_upload_id_marker


async def _read_chunks(client: Minio, job: MergeJob) -> AsyncGenerator[bytes, None]:
    """Every chunk's bytes, in order, in blocks (`_read_chunk`); callers wrap it in
    `contextlib.aclosing` too."""
    for chunk in job.chunks:
        async with contextlib.aclosing(
            _read_chunk(client, job.bucket, chunk, job.block_bytes)
        ) as blocks:
            async for block in blocks:
                yield block


async def _read_chunk(
    client: Minio, bucket: str, chunk: SourceChunk, block_bytes: int
) -> AsyncGenerator[bytes, None]:
    """A chunk's bytes in blocks of at most `block_bytes`, its size and SHA-256 checked.
    Callers wrap it in `contextlib.aclosing` so that the response is closed when they stop early.
    """
    hasher = hashlib.sha256() if chunk.sha256 else None
    read = 0
    try:
        response = await client.get_object(bucket, chunk.key)
    except S3_ERRORS as exc:
        raise RetryableError(f"reading s3://{bucket}/{chunk.key} failed: {exc!r}") from exc
    try:
        async for block in response.content.iter_chunked(block_bytes):
            read += len(block)
            if hasher is not None:
                hasher.update(block)
            yield block
    except S3_ERRORS as exc:
        raise RetryableError(f"reading s3://{bucket}/{chunk.key} failed: {exc!r}") from exc
    finally:
        response.close()
    if read != chunk.size:
        raise RetryableError(f"{chunk.key}: read {read} bytes, expected {chunk.size}")
    if hasher is not None and chunk.sha256 is not None:
        _check_digest(hasher, chunk.sha256, what=chunk.key)


async def _upload_part(uploader: object, data: bytes, part_number: int) -> None:
    try:
        await uploader.upload_part(data, part_number)  # type: ignore[attr-defined]
    except S3_ERRORS as exc:
        raise RetryableError(f"uploading part {part_number} failed: {exc!r}") from exc


async def _abort_quietly(uploader: object, bucket: str, key: str) -> None:
    """Best effort: an upload left behind is aborted later by the GC."""
    try:
        await uploader.abort()  # type: ignore[attr-defined]
    except S3_ERRORS as exc:  # also: never started, or already aborted by a failed part
        log.debug("abort of the multipart upload of s3://%s/%s: %r", bucket, key, exc)


def _check_digest(hasher: hashlib._Hash, expected: str, *, what: str = "file") -> None:
    actual = hasher.hexdigest()
    if actual != expected.strip().lower():
        raise ChecksumMismatchError(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}"
        )
