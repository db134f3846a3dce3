"""The S3 merge functions against real S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from miniopy_async.api import Minio

from chat4all_workers.storage.merge import (
    MIN_PART_SIZE,
    ChecksumMismatchError,
    MergeJob,
    SourceChunk,
    can_compose,
    merge_streaming,
    remove_prefix,
)
from tests.roles.uploads import MIB, object_keys, object_sha256


def test_can_compose_needs_every_chunk_but_the_last_at_the_minimum_part_size() -> None:
    assert can_compose([MIN_PART_SIZE, MIN_PART_SIZE, 1])
    assert can_compose([1])
    assert not can_compose([MIN_PART_SIZE, MIN_PART_SIZE - 1, MIN_PART_SIZE])
    assert not can_compose([])


async def put_chunks(s3: Minio, bucket: str, chunks: list[bytes]) -> list[SourceChunk]:
    sources = []
    for n, data in enumerate(chunks, start=1):
        key = f"chunks/t/chunk-{n:05d}"
        await s3.put_object(bucket, key, io.BytesIO(data), len(data))
        sources.append(SourceChunk(key, len(data), hashlib.sha256(data).hexdigest()))
    return sources


@pytest.mark.stack
async def test_merge_streaming_recuts_unaligned_chunks_into_parts(
    s3_client: Minio, s3_bucket: str
) -> None:
    chunks = [os.urandom(3 * MIB), os.urandom(3 * MIB), os.urandom(3 * MIB), b"x"]
    sources = await put_chunks(s3_client, s3_bucket, chunks)
    whole = hashlib.sha256(b"".join(chunks)).hexdigest()

    job = MergeJob(
        bucket=s3_bucket,
        key="files/t/out.bin",
        chunks=sources,
        content_type=None,
        expected_sha256=whole,
        block_bytes=256 * 1024,
        part_size_bytes=MIN_PART_SIZE,
    )
    await merge_streaming(s3_client, job)

    assert await object_sha256(s3_client, s3_bucket, "files/t/out.bin") == whole


@pytest.mark.stack
async def test_merge_streaming_rejects_a_chunk_whose_recorded_checksum_differs(
    s3_client: Minio, s3_bucket: str
) -> None:
    sources = await put_chunks(s3_client, s3_bucket, [os.urandom(MIB), os.urandom(MIB)])
    sources[1] = SourceChunk(sources[1].key, sources[1].size, hashlib.sha256(b"no").hexdigest())

    job = MergeJob(
        bucket=s3_bucket,
        key="files/t/out.bin",
        chunks=sources,
        content_type=None,
        expected_sha256=None,
        block_bytes=MIB,
        part_size_bytes=MIN_PART_SIZE,
    )

    with pytest.raises(ChecksumMismatchError, match="chunk-00002"):
        await merge_streaming(s3_client, job)

    assert await object_keys(s3_client, s3_bucket, "files/") == []


@pytest.mark.stack
async def test_remove_prefix_deletes_only_that_prefix(s3_client: Minio, s3_bucket: str) -> None:
    await put_chunks(s3_client, s3_bucket, [b"a", b"b"])
    await s3_client.put_object(s3_bucket, "chunks/tt/chunk-00001", io.BytesIO(b"c"), 1)

    removed = await remove_prefix(s3_client, s3_bucket, "chunks/t/")

    assert removed == 2
    assert await object_keys(s3_client, s3_bucket, "chunks/") == ["chunks/tt/chunk-00001"]
