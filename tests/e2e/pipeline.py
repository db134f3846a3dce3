"""The platform's side of an end-to-end run: what its API would write, and what to check after.

A message is written as the API writes it (harness/pipeline.py: the product's own writer, the
`messages` row and its `message.created` outbox event in one transaction). An upload is a `files`
row with its chunks in S3, and its merge request goes out through the outbox too (a row with
`topic` set), so the whole flow starts in PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg
import orjson
from miniopy_async.api import Minio

from harness.deployment import Deployment
from harness.pipeline import Sent, insert_one
from tests.roles.uploads import seed_upload


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


async def mock_callbacks_pending(deployment: Deployment) -> int:
    """The webhooks both channel mocks still have to call back (scheduled, waiting for a retry,
    or under way), from their /__mock__/stats (one account's, or each account's)."""
    pending = 0
    async with aiohttp.ClientSession() as http:
        for port in (deployment.whatsapp_port, deployment.instagram_port):
            async with http.get(f"http://127.0.0.1:{port}/__mock__/stats") as response:
                webhooks = (await response.json())["webhooks"]
            accounts = [webhooks] if "pending" in webhooks else list(webhooks.values())
            pending += sum(int(a["pending"]) for a in accounts)
    return pending


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
