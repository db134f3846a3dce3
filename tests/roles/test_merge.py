"""The merge role against real Kafka, PostgreSQL and S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import asyncpg
import orjson
import pytest
from miniopy_async.api import Minio

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.db.migrate import migrate
from chat4all_workers.storage.s3 import file_key
from harness.deployment import settings_for
from harness.stack import StackEndpoints
from harness.topics import read_topic
from tests.roles.uploads import MIB, object_keys, object_sha256, seed_upload
from tests.stack import KafkaTopicFactory
from tests.support import produce

pytestmark = [pytest.mark.stack, pytest.mark.timeout(90)]


@dataclass
class MergeEnv:
    stack: StackEndpoints
    settings: Settings
    conn: asyncpg.Connection
    s3: Minio
    bucket: str
    requests: str
    completed: str
    dlq: str

    async def request(self, upload_id: uuid.UUID, total_chunks: int) -> None:
        value = orjson.dumps(
            {
                "upload_id": str(upload_id),
                "filename": "ignored.pdf",
                "total_chunks": total_chunks,
                "timestamp": "2026-11-28T10:30:00Z",
            }
        )
        await produce(self.stack, self.requests, [(str(upload_id).encode(), value)])

    async def run_merge(self) -> None:
        async with App(self.settings, roles=["merge"], drain=True, serve_http=False) as app:
            await app.wait()

    async def status(self, upload_id: uuid.UUID) -> asyncpg.Record:
        row = await self.conn.fetchrow("SELECT * FROM files WHERE id = $1", upload_id)
        assert row is not None
        return row

    async def chunk_row_count(self, upload_id: uuid.UUID) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM file_chunks WHERE file_id = $1", upload_id
            )
        )

    async def events(self) -> list[dict[str, object]]:
        return [orjson.loads(r.value) for r in await read_topic(self.stack, self.completed)]


@pytest.fixture
async def env(
    stack: StackEndpoints,
    pg_database: str,
    s3_client: Minio,
    s3_bucket: str,
    kafka_topic: KafkaTopicFactory,
    consumer_group: str,
) -> AsyncIterator[MergeEnv]:
    topics = {
        "file_merge_requests": await kafka_topic(prefix="merge-req"),
        "file_upload_completed": await kafka_topic(prefix="merge-done"),
        "dlq": await kafka_topic(prefix="merge-dlq"),
    }
    settings = settings_for(
        stack,
        database_url=pg_database,
        bucket=s3_bucket,
        consumer_group=consumer_group,
        topics=topics,
    )
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        yield MergeEnv(
            stack,
            settings,
            conn,
            s3_client,
            s3_bucket,
            topics["file_merge_requests"],
            topics["file_upload_completed"],
            topics["dlq"],
        )
    finally:
        await conn.close()


def sha256(parts: Sequence[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def test_merge_composes_large_chunks_server_side(env: MergeEnv) -> None:
    chunks = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1 * MIB)]
    upload_id = await seed_upload(env.conn, env.s3, env.bucket, chunks, filename="../a/b.pdf")
    await env.request(upload_id, 3)

    await env.run_merge()

    key = file_key(str(upload_id), "../a/b.pdf")
    assert key == f"files/{upload_id}/_a_b.pdf"
    assert await object_sha256(env.s3, env.bucket, key) == sha256(chunks)
    row = await env.status(upload_id)
    assert (row["status"], row["file_size"], row["storage_key"]) == ("COMPLETED", 11 * MIB, key)
    assert row["completed_at"] is not None
    (event,) = await env.events()
    assert event["upload_id"] == event["file_id"] == str(upload_id)
    assert (event["conversation_id"], event["uploader_id"]) == (42, 7)
    assert (event["file_size"], event["storage_key"], event["mime_type"]) == (
        11 * MIB,
        key,
        "application/pdf",
    )
    assert hashlib.sha256(await download(str(event["download_url"]))).hexdigest() == sha256(chunks)


async def test_merge_streams_small_chunks_and_checks_the_checksum(env: MergeEnv) -> None:
    chunks = [os.urandom(1 * MIB) for _ in range(4)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, checksum_sha256=sha256(chunks)
    )
    await env.request(upload_id, 4)

    await env.run_merge()

    (event,) = await env.events()
    assert hashlib.sha256(await download(str(event["download_url"]))).hexdigest() == sha256(chunks)
    assert (await env.status(upload_id))["status"] == "COMPLETED"


async def test_merge_deletes_chunk_objects_and_rows_when_done(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB), os.urandom(1000)]
    upload_id = await seed_upload(env.conn, env.s3, env.bucket, chunks)
    await env.request(upload_id, 2)

    await env.run_merge()

    assert await object_keys(env.s3, env.bucket, f"chunks/{upload_id}/") == []
    assert await env.chunk_row_count(upload_id) == 0


async def test_merge_missing_chunk_fails_and_keeps_chunks(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB) for _ in range(3)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, rows_for=[1, 3], objects_for=[1, 3]
    )
    await env.request(upload_id, 3)

    await env.run_merge()

    row = await env.status(upload_id)
    assert row["status"] == "FAILED"
    assert "missing chunk rows: 2" in row["error"]
    assert "missing chunk objects: 2" in row["error"]
    assert len(await object_keys(env.s3, env.bucket, f"chunks/{upload_id}/")) == 2
    assert await env.chunk_row_count(upload_id) == 2
    assert await object_keys(env.s3, env.bucket, "files/") == []
    assert await env.events() == []
    (dead,) = await read_topic(env.stack, env.dlq)
    headers = dict(dead.headers)
    assert headers["dlq.source"] == b"merge"
    assert headers["dlq.error_type"] == b"merge_rejected"
    assert dead.key == str(upload_id).encode()


async def test_merge_extra_chunk_object_fails(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB) for _ in range(3)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, total_chunks=2, rows_for=[1, 2]
    )
    await env.request(upload_id, 2)

    await env.run_merge()

    row = await env.status(upload_id)
    assert row["status"] == "FAILED"
    assert "extra chunk objects" in row["error"]


async def test_merge_checksum_mismatch_fails_and_keeps_chunks(env: MergeEnv) -> None:
    chunks = [os.urandom(5 * MIB), os.urandom(MIB)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, checksum_sha256=hashlib.sha256(b"other").hexdigest()
    )
    await env.request(upload_id, 2)

    await env.run_merge()

    row = await env.status(upload_id)
    assert row["status"] == "FAILED"
    assert "checksum mismatch" in row["error"]
    assert len(await object_keys(env.s3, env.bucket, f"chunks/{upload_id}/")) == 2
    assert await env.chunk_row_count(upload_id) == 2
    assert await object_keys(env.s3, env.bucket, "files/") == []
    assert await env.events() == []


async def test_merge_streaming_checksum_mismatch_leaves_no_object(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB) for _ in range(6)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, checksum_sha256=sha256(chunks[::-1])
    )
    await env.request(upload_id, 6)

    await env.run_merge()

    assert (await env.status(upload_id))["status"] == "FAILED"
    assert await object_keys(env.s3, env.bucket, "files/") == []


async def test_merge_replayed_request_emits_no_second_event(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB), os.urandom(MIB)]
    upload_id = await seed_upload(env.conn, env.s3, env.bucket, chunks)
    await env.request(upload_id, 2)
    await env.run_merge()
    first = await env.status(upload_id)

    await env.request(upload_id, 2)
    await env.request(upload_id, 2)
    await env.run_merge()

    assert len(await env.events()) == 1
    again = await env.status(upload_id)
    assert (again["status"], again["completed_at"]) == ("COMPLETED", first["completed_at"])
    key = file_key(str(upload_id), "report.pdf")
    assert await object_sha256(env.s3, env.bucket, key) == sha256(chunks)


async def test_merge_resumes_an_upload_left_in_merging(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB), os.urandom(MIB)]
    upload_id = await seed_upload(env.conn, env.s3, env.bucket, chunks, status="MERGING")
    await env.request(upload_id, 2)

    await env.run_merge()

    assert (await env.status(upload_id))["status"] == "COMPLETED"
    assert len(await env.events()) == 1


async def test_merge_replay_after_completion_finishes_the_cleanup_only(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB)]
    upload_id = await seed_upload(env.conn, env.s3, env.bucket, chunks, status="COMPLETED")
    await env.request(upload_id, 1)

    await env.run_merge()

    assert await object_keys(env.s3, env.bucket, f"chunks/{upload_id}/") == []
    assert await env.chunk_row_count(upload_id) == 0
    assert await env.events() == []


async def test_merge_unknown_upload_is_dead_lettered(env: MergeEnv) -> None:
    await env.request(uuid.uuid4(), 1)

    await env.run_merge()

    (dead,) = await read_topic(env.stack, env.dlq)
    assert dict(dead.headers)["dlq.error_type"] == b"unknown_upload"


async def test_merge_failed_upload_is_left_alone(env: MergeEnv) -> None:
    chunks = [os.urandom(MIB)]
    upload_id = await seed_upload(
        env.conn, env.s3, env.bucket, chunks, status="FAILED", age=timedelta(hours=1)
    )
    await env.request(upload_id, 1)

    await env.run_merge()

    assert (await env.status(upload_id))["status"] == "FAILED"
    assert await env.events() == []
    assert len(await object_keys(env.s3, env.bucket, f"chunks/{upload_id}/")) == 1
