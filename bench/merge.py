"""Benchmark of the merge role: time and worker memory for a server-side and a streamed merge.

    python bench/merge.py [--scale 0.25] [--checksum]

Scenario `compose`: 1 GiB in 5 MiB chunks (server-side compose_object).
Scenario `stream`: 256 MiB in 1 MiB chunks (streamed multipart upload).
`--scale` multiplies both sizes; `--checksum` records files.checksum_sha256 so the merge also
reads and hashes the whole file.

The worker runs as a subprocess (`--worker`), a real `App` with the merge role only, so its
resident memory is not mixed with the benchmark's own uploads; RSS is sampled every 10 ms with
psutil. Growth = peak RSS during the merge - RSS just before the request. Everything is created
uniquely for the run (database, bucket, topics) and removed afterwards. Services come from the
usual environment variables (`scripts/devstack env`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from miniopy_async.api import Minio
from miniopy_async.deleteobjects import DeleteObject

from chat4all_workers.db.migrate import migrate
from chat4all_workers.roles import load_settings
from chat4all_workers.storage.s3 import chunk_key, file_key

# Run as a script, so the repository is put on the path for the shared bench helpers.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench.procs import RssSampler, stop_process  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Scenario:
    name: str
    total_bytes: int
    chunk_bytes: int


@dataclass
class Result:
    scenario: Scenario
    chunks: int
    seconds: float
    baseline_rss: int
    peak_rss: int
    verified: bool

    def line(self) -> str:
        s = self.scenario
        growth = (self.peak_rss - self.baseline_rss) / MIB
        rate = s.total_bytes / MIB / self.seconds
        return (
            f"{s.name:8s} {s.total_bytes / MIB:7.0f} MiB in {self.chunks:4d} chunks of "
            f"{s.chunk_bytes / MIB:.0f} MiB: {self.seconds:7.2f} s ({rate:7.1f} MiB/s), worker RSS "
            f"{self.baseline_rss / MIB:6.1f} -> peak {self.peak_rss / MIB:6.1f} MiB "
            f"(growth {growth:5.1f} MiB, {'OK' if growth < 64 else 'OVER 64 MiB'}), "
            f"sha256 {'verified' if self.verified else 'MISMATCH'}"
        )


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


# -- the worker subprocess ----------------------------------------------------------------------


async def worker(doc: dict[str, Any]) -> None:
    from chat4all_workers.app import App

    settings = load_settings({}, doc)
    async with App(settings, roles=["merge"], serve_http=False) as app:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, app.request_stop)
        await app.wait_ready(timeout_s=60)
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        await app.wait()


# -- the benchmark ------------------------------------------------------------------------------


async def upload_chunks(
    s3: Minio, bucket: str, upload_id: uuid.UUID, scenario: Scenario
) -> tuple[list[int], str]:
    """Random chunks, 8 uploads at a time; returns their sizes and the file's SHA-256."""
    sizes = []
    remaining = scenario.total_bytes
    while remaining > 0:
        sizes.append(min(scenario.chunk_bytes, remaining))
        remaining -= sizes[-1]
    hasher = hashlib.sha256()
    limit = asyncio.Semaphore(8)
    pending: list[asyncio.Task[object]] = []
    for n, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        hasher.update(data)
        await limit.acquire()

        async def put(n: int = n, data: bytes = data) -> object:
            try:
                return await s3.put_object(
                    bucket, chunk_key(str(upload_id), n), io.BytesIO(data), len(data)
                )
            finally:
                limit.release()

        pending.append(asyncio.create_task(put()))
    await asyncio.gather(*pending)
    return sizes, hasher.hexdigest()


async def object_sha256(s3: Minio, bucket: str, key: str) -> str:
    response = await s3.get_object(bucket, key)
    try:
        hasher = hashlib.sha256()
        async for block in response.content.iter_chunked(MIB):
            hasher.update(block)
        return hasher.hexdigest()
    finally:
        response.close()


async def run_scenario(
    scenario: Scenario,
    *,
    conn: asyncpg.Connection,
    s3: Minio,
    bucket: str,
    producer: AIOKafkaProducer,
    topic: str,
    sampler_pid: int,
    checksum: bool,
) -> Result:
    upload_id = uuid.uuid4()
    sizes, digest = await upload_chunks(s3, bucket, upload_id, scenario)
    await conn.execute(
        """INSERT INTO files (id, conversation_id, uploader_id, filename, mime_type,
               checksum_sha256, status, chunk_size, total_chunks, uploaded_chunks)
           VALUES ($1, 1, 1, $2, 'application/octet-stream', $3, 'UPLOADING', $4, $5, $5)""",
        upload_id,
        f"{scenario.name}.bin",
        digest if checksum else None,
        scenario.chunk_bytes,
        len(sizes),
    )
    await conn.executemany(
        """INSERT INTO file_chunks (id, file_id, chunk_number, chunk_size, storage_key)
           VALUES ($1, $2, $3, $4, $5)""",
        [
            (uuid.uuid4(), upload_id, n, size, chunk_key(str(upload_id), n))
            for n, size in enumerate(sizes, start=1)
        ],
    )
    request = orjson.dumps(
        {
            "upload_id": str(upload_id),
            "filename": f"{scenario.name}.bin",
            "total_chunks": len(sizes),
            "timestamp": "2026-11-28T10:30:00Z",
        }
    )
    sampler = RssSampler(sampler_pid, interval_s=0.01)
    baseline = sampler.rss()
    with sampler:
        started = time.perf_counter()
        await producer.send_and_wait(topic, request, key=str(upload_id).encode())
        while True:
            status, error = await conn.fetchrow(
                "SELECT status, error FROM files WHERE id = $1", upload_id
            )
            if status in ("COMPLETED", "FAILED"):
                break
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
    if status != "COMPLETED":
        raise RuntimeError(f"{scenario.name}: merge ended {status}: {error}")
    key = file_key(str(upload_id), f"{scenario.name}.bin")
    verified = await object_sha256(s3, bucket, key) == digest
    return Result(scenario, len(sizes), seconds, baseline, sampler.peak, verified)


async def bench(args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:10]
    database_url = env("DATABASE_URL", "postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all")
    bootstrap = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    s3_endpoint = env("MINIO_ENDPOINT", "127.0.0.1:9000")
    access_key = env("MINIO_ACCESS_KEY", "chat4all")
    secret_key = env("MINIO_SECRET_KEY", "chat4all-secret")
    secure = env("MINIO_SECURE", "false").lower() in ("1", "true", "yes")
    db_name = f"bench_merge_{tag}"
    bench_url = urlunsplit(urlsplit(database_url)._replace(path=f"/{db_name}"))
    bucket = f"bench-merge-{tag}"
    topics = {
        "file_merge_requests": f"bench-merge-req-{tag}",
        "file_upload_completed": f"bench-merge-done-{tag}",
        "dlq": f"bench-merge-dlq-{tag}",
    }
    scenarios = [
        Scenario("compose", int(1024 * MIB * args.scale), 5 * MIB),
        Scenario("stream", int(256 * MIB * args.scale), 1 * MIB),
    ]
    doc = {
        "kafka": {"bootstrap_servers": bootstrap, "consumer_group": f"bench-{tag}"},
        "topics": topics,
        "postgres": {"url": bench_url},
        "s3": {
            "endpoint": s3_endpoint,
            "access_key": access_key,
            "secret_key": secret_key,
            "secure": secure,
            "bucket": bucket,
        },
        "observability": {"log_level": "WARNING"},
    }

    admin_conn = await asyncpg.connect(database_url)
    await admin_conn.execute(f'CREATE DATABASE "{db_name}"')
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    s3 = Minio(s3_endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    child: asyncio.subprocess.Process | None = None
    conn: asyncpg.Connection | None = None
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
        await s3.make_bucket(bucket)
        conn = await asyncpg.connect(bench_url)
        await migrate(conn)
        await producer.start()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--worker",
            orjson.dumps(doc).decode(),
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        async with asyncio.timeout(90):
            while (line := await child.stdout.readline()) != b"READY\n":
                if not line:
                    raise RuntimeError("the worker exited before it was ready")
        print(f"merge benchmark, scale {args.scale}, checksum {'on' if args.checksum else 'off'}")
        for scenario in scenarios:
            result = await run_scenario(
                scenario,
                conn=conn,
                s3=s3,
                bucket=bucket,
                producer=producer,
                topic=topics["file_merge_requests"],
                sampler_pid=child.pid,
                checksum=args.checksum,
            )
            print(result.line(), flush=True)
    finally:
        if child is not None:
            await stop_process(child)
        await producer.stop()
        if conn is not None:
            await conn.close()
        with contextlib.suppress(Exception):
            keys = [
                DeleteObject(o.object_name)
                async for o in s3.list_objects(bucket, recursive=True)
                if o.object_name
            ]
            if keys:
                _ = [e async for e in s3.remove_objects(bucket, keys)]
            await s3.remove_bucket(bucket)
        await s3.close_session()
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(topics.values()))
        await admin.close()
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin_conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the file sizes")
    parser.add_argument("--checksum", action="store_true", help="verify the file's SHA-256 too")
    parser.add_argument("--worker", metavar="SETTINGS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(orjson.loads(args.worker)))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
