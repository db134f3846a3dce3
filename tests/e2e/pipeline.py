"""The platform's side of an end-to-end run: what its API would write, and what to check after.

A message is written as the API writes it: the `messages` row and its `message.created` outbox
event in one transaction. An upload is a `files` row with its chunks in S3, and its merge request
goes out through the outbox too (a row with `topic` set), so the whole flow starts in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from miniopy_async.api import Minio

from chat4all_workers.roles import resolve_roles
from chat4all_workers.roles.webhooks import ROLE as WEBHOOKS_ROLE
from tests.roles.uploads import seed_upload
from tests.support import Deployment, WorkerProcess, free_port

WEBHOOKS = WEBHOOKS_ROLE.name


@contextlib.asynccontextmanager
async def workers_running(
    deployment: Deployment, log_dir: Path, groups: Sequence[str], **overrides: dict[str, Any]
) -> AsyncIterator[list[WorkerProcess]]:
    """One `chat4all-workers run --roles <group>` process per group, each with its own
    operations port and `overrides` (settings sections); yields them once all answer /readyz,
    and stops them afterwards. The first process to run the webhooks role listens on the
    deployment's webhooks port, any other one on a port of its own."""
    procs: list[WorkerProcess] = []
    webhooks_bound = False
    try:
        for n, roles in enumerate(groups):
            binds = WEBHOOKS in {spec.name for spec in resolve_roles(roles.split(","))}
            if binds and webhooks_bound:
                webhooks = {**overrides.get("webhooks", {}), "port": free_port()}
                env = deployment.environ(**{**overrides, "webhooks": webhooks})
            else:
                env = deployment.environ(**overrides)
            webhooks_bound = webhooks_bound or binds
            if n:
                env["METRICS_PORT"] = str(free_port())
            procs.append(await WorkerProcess(roles, env, log_dir / f"worker-{n}.log").start())
        for proc in procs:
            await proc.ready()
        yield procs
    finally:
        for proc in procs:
            await proc.stop()


def deployment_running(
    deployment: Deployment, log_dir: Path, **overrides: dict[str, Any]
) -> contextlib.AbstractAsyncContextManager[list[WorkerProcess]]:
    """The production roles (`--roles all`) in one process, the channel mocks in another (so
    what the mocks saw survives anything done to the workers): yields [workers, mocks]."""
    return workers_running(
        deployment, log_dir, ["all", "whatsapp_mock,instagram_mock"], **overrides
    )


@dataclass(frozen=True)
class Sent:
    message_id: str
    conversation_id: int
    content: str


async def insert_messages(
    deployment: Deployment, *, conversations: Sequence[int], per_conversation: int, tag: str = "m"
) -> list[Sent]:
    """Messages to both channels, interleaved across conversations, each in its own
    transaction with its outbox event (the transactional outbox)."""
    written: list[Sent] = []
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for n in range(per_conversation):
            for conversation in conversations:
                written.append(await insert_one(conn, conversation, f"{tag}{conversation}-{n}"))
    finally:
        await conn.close()
    return written


async def insert_one(conn: asyncpg.Connection, conversation: int, content: str) -> Sent:
    """One message and its `message.created` event, committed together."""
    message_id = uuid.uuid4()
    value = {
        "message_id": str(message_id),
        "conversation_id": conversation,
        "sender_id": 7,
        "sender_username": "ana",
        "payload": {"type": "text", "content": content},
        "channels": "all",
        "recipients": {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"},
        "created_at": "2026-11-28T10:30:00Z",
    }
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO messages (id, conversation_id, sender_id, payload, channels, status)
               VALUES ($1, $2, 7, $3, '["whatsapp", "instagram"]', 'ACCEPTED')""",
            message_id,
            conversation,
            orjson.dumps(value["payload"]).decode(),
        )
        await conn.execute(
            """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
               VALUES ($1, 'conversation', $2, 'message.created', $3)""",
            uuid.uuid4(),
            str(conversation),
            orjson.dumps(value).decode(),
        )
    return Sent(str(message_id), conversation, content)


async def upload_file(deployment: Deployment, s3: Minio, chunks: Sequence[bytes]) -> uuid.UUID:
    """An uploaded file whose merge request is published through the outbox."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        upload_id = await seed_upload(conn, s3, deployment.bucket, chunks, filename="e2e.bin")
        request = {
            "upload_id": str(upload_id),
            "filename": "e2e.bin",
            "total_chunks": len(chunks),
            "timestamp": "2026-11-28T10:30:00Z",
        }
        await conn.execute(
            """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, topic,
                                          payload)
               VALUES ($1, 'file', $2, 'file.merge_requested', $3, $4)""",
            uuid.uuid4(),
            str(upload_id),
            deployment.topics["file_merge_requests"],
            orjson.dumps(request).decode(),
        )
    finally:
        await conn.close()
    return upload_id


async def statuses(deployment: Deployment, ids: Sequence[str]) -> dict[str, str]:
    conn = await asyncpg.connect(deployment.database_url)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, status FROM messages WHERE id = ANY($1::uuid[])", list(ids)
        )
    finally:
        await conn.close()
    return {r["id"]: r["status"] for r in rows}


async def file_status(deployment: Deployment, upload_id: uuid.UUID) -> str:
    conn = await asyncpg.connect(deployment.database_url)
    try:
        return str(await conn.fetchval("SELECT status FROM files WHERE id = $1", upload_id))
    finally:
        await conn.close()


async def mock_sent(deployment: Deployment, channel: str) -> list[dict[str, Any]]:
    """What a channel mock accepted, in order (its /__mock__/sent)."""
    port = deployment.whatsapp_port if channel == "whatsapp" else deployment.instagram_port
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/__mock__/sent") as response,
    ):
        return list(await response.json())


def check_deliveries(sent: list[Sent], accepted: list[dict[str, Any]]) -> tuple[int, int]:
    """(duplicates, out-of-order conversations) among what one channel accepted."""
    texts = [a["text"] for a in accepted]
    duplicates = len(texts) - len(set(texts))
    expected: dict[int, list[str]] = {}
    for s in sent:
        expected.setdefault(s.conversation_id, []).append(s.content)
    disordered = 0
    for contents in expected.values():
        wanted = set(contents)
        got = [t for t in dict.fromkeys(texts) if t in wanted]
        if got != [c for c in contents if c in set(got)]:
            disordered += 1
    return duplicates, disordered
