"""Messages written as the platform's API writes them, so the whole flow starts in PostgreSQL.

The writing is the product's own (`chat4all_workers.ops.send`, behind `chat4all-workers send`):
the `messages` row and its `message.created` outbox event in ONE transaction, the event's payload
in the contract's `message_processing` format. The harness only chooses the message (its
conversation, content and recipients), so a change to what the API writes changes every test and
benchmark with it.

One transaction per message, as the API commits them: the rate a benchmark offers is the rate of
those commits (bench/pipeline.py runs them on a connection pool, many in flight). The product's
writer runs the same two INSERTs a hand-written one did and nothing more (a file check only for
file messages), so there is no batched path: measured on the 2-core development machine, both
wrote about 1,000 messages/s one at a time and 2,000-2,700/s with 32 in flight, far above the
rates the benchmark offers; building the message costs about 4 us.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from chat4all_workers.ops.send import NewMessage, write

SENDER_ID = 7


@dataclass(frozen=True)
class Sent:
    message_id: str
    conversation_id: int
    content: str


def new_message(conversation: int, content: str) -> NewMessage:
    """A text message to both channels of `conversation`, each with a recipient of its own that
    the channel mocks accept (`+55<conversation>` on WhatsApp, `ig<conversation>` on Instagram)."""
    recipients = {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"}
    return NewMessage(
        message_id=uuid.uuid4(),
        conversation_id=conversation,
        sender_id=SENDER_ID,
        payload={"type": "text", "content": content},
        channels=tuple(recipients),
        recipients=recipients,
        created_at=datetime.now(UTC),
    )


async def insert_one(conn: asyncpg.Connection, conversation: int, content: str) -> Sent:
    """One message and its `message.created` event, committed together."""
    written = await write(conn, new_message(conversation, content))
    return Sent(str(written.message.message_id), conversation, content)
