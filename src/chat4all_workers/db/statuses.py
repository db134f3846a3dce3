"""The SQL of the status updater: history rows (idempotent) and the message's overall status."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from chat4all_workers.frozen import frozen


@frozen(slots=True)
class MessageRow:
    status: str
    channels: list[str]


async def record_history(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    channel: str,
    status: str,
    details: dict[str, Any],
    at: datetime,
) -> bool:
    """Append one history row; False when this (message, channel, status) was already there."""
    inserted = await conn.fetchval(
        """INSERT INTO message_status_history (message_id, status, channel, details, "timestamp")
           VALUES ($1, $2, $3, $4::jsonb, $5)
           ON CONFLICT ON CONSTRAINT message_status_history_once DO NOTHING
           RETURNING true""",
        message_id,
        status,
        channel,
        orjson.dumps(details).decode(),
        at,
    )
    return bool(inserted)


async def lock_message(conn: asyncpg.Connection, message_id: uuid.UUID) -> MessageRow | None:
    """The message's status and channels, locked until the transaction ends."""
    row = await conn.fetchrow(
        "SELECT status, channels::text AS channels FROM messages WHERE id = $1 FOR UPDATE",
        message_id,
    )
    if row is None:
        return None
    channels = orjson.loads(row["channels"])
    return MessageRow(
        status=row["status"],
        channels=[c for c in channels if isinstance(c, str)] if isinstance(channels, list) else [],
    )


async def failed_channels(conn: asyncpg.Connection, message_id: uuid.UUID) -> set[str]:
    rows = await conn.fetch(
        "SELECT channel FROM message_status_history WHERE message_id = $1 AND status = 'FAILED'",
        message_id,
    )
    return {r["channel"] for r in rows}


async def set_status(conn: asyncpg.Connection, message_id: uuid.UUID, status: str) -> None:
    await conn.execute(
        "UPDATE messages SET status = $2, updated_at = now() WHERE id = $1", message_id, status
    )
