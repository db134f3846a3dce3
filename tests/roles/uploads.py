"""Arranging uploads for the files-pipeline tests: a `files` row, `file_chunks` rows and chunk
objects, in whatever state (fresh, stale, half-merged) a test needs."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
from miniopy_async.api import Minio

from chat4all_workers.storage.s3 import chunk_key

MIB = 1024 * 1024


async def seed_upload(
    conn: asyncpg.Connection,
    s3: Minio,
    bucket: str,
    chunks: Sequence[bytes],
    *,
    status: str = "UPLOADING",
    filename: str = "report.pdf",
    checksum_sha256: str | None = None,
    total_chunks: int | None = None,
    age: timedelta = timedelta(0),
    rows_for: Sequence[int] | None = None,
    objects_for: Sequence[int] | None = None,
) -> uuid.UUID:
    """An upload of `chunks` (numbered from 1). `rows_for`/`objects_for` restrict which chunk
    numbers get a row / an object (default: all); `age` backdates the row and its chunks."""
    upload_id = uuid.uuid4()
    numbered = dict(enumerate(chunks, start=1))
    await conn.execute(
        """INSERT INTO files (id, conversation_id, uploader_id, filename, mime_type,
               checksum_sha256, status, chunk_size, total_chunks, uploaded_chunks,
               created_at, updated_at)
           VALUES ($1, 42, 7, $2, 'application/pdf', $3, $4, $5, $6, $7,
               now() - $8::interval, now() - $8::interval)""",
        upload_id,
        filename,
        checksum_sha256,
        status,
        len(chunks[0]) if chunks else None,
        len(chunks) if total_chunks is None else total_chunks,
        len(chunks),
        age,
    )
    for n in rows_for if rows_for is not None else numbered:
        await conn.execute(
            """INSERT INTO file_chunks (id, file_id, chunk_number, chunk_size, storage_key,
                   checksum_sha256, uploaded_at)
               VALUES ($1, $2, $3, $4, $5, $6, now() - $7::interval)""",
            uuid.uuid4(),
            upload_id,
            n,
            len(numbered[n]),
            chunk_key(str(upload_id), n),
            hashlib.sha256(numbered[n]).hexdigest(),
            age,
        )
    for n in objects_for if objects_for is not None else numbered:
        data = numbered[n]
        await s3.put_object(bucket, chunk_key(str(upload_id), n), io.BytesIO(data), len(data))
    return upload_id


async def object_keys(s3: Minio, bucket: str, prefix: str) -> list[str]:
    return sorted(
        [
            o.object_name
            async for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
            if o.object_name is not None
        ]
    )


async def object_sha256(s3: Minio, bucket: str, key: str) -> str:
    response = await s3.get_object(bucket, key)
    try:
        hasher = hashlib.sha256()
        async for block in response.content.iter_chunked(MIB):
            hasher.update(block)
        return hasher.hexdigest()
    finally:
        response.close()
