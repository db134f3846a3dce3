"""Messages written as the platform's API writes them, so the whole flow starts in PostgreSQL:
the `messages` row and its `message.created` outbox event in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import orjson


@dataclass(frozen=True)
class Sent:
    message_id: str
    conversation_id: int
    content: str


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
