"""The `message_status_updates` format (contract section 3): one record per status of one
message on one channel, keyed `conversation:{conversation_id}` so a conversation's statuses
keep their order.

Written by the router (SENT, FAILED) and by the webhooks role (the provider's statuses), read by
the status updater: the record and its key are built here only (`status_record`), and read here
only (`parse_update`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from chat4all_workers.config import CHANNELS
from chat4all_workers.formats.wire import present, read_record
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.outgoing import OutgoingRecord

PROGRESS = ("ACCEPTED", "PROCESSING", "SENT", "DELIVERED", "READ")
FAILED = "FAILED"


@frozen
class StatusUpdate:
    message_id: uuid.UUID
    conversation_id: int
    channel: str
    status: str
    at: datetime
    details: dict[str, Any]


def status_record(
    topic: str,
    *,
    message_id: str,
    conversation_id: int,
    channel: str,
    status: str,
    details: Mapping[str, Any],
    at: datetime | None = None,
) -> OutgoingRecord:
    """The record of one status; `at` is when it happened (the provider's time), else now.

    orjson writes the time as `datetime.isoformat` does (RFC 3339, its offset, microseconds
    when there are some), in a fifth of the time: 0.3 us against 1.5, on every status."""
    value = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "channel": channel,
        "new_status": status,
        "timestamp": at or datetime.now(UTC),
        "details": details,
    }
    return OutgoingRecord(topic, orjson.dumps(value), status_key(conversation_id))


def status_key(conversation_id: int) -> bytes:
    return f"conversation:{conversation_id}".encode()


def parse_update(value: bytes | None) -> StatusUpdate:
    """The update a record carries, or InvalidRecordError naming every field that is wrong:
    `message_id` (UUID), `conversation_id` (bigint), `channel` (a known channel), `new_status`,
    `timestamp` (RFC 3339 with offset; absent or null: now), `details` (an object jsonb can
    store, or absent/null)."""
    fields = read_record(value)
    message_id = fields.uuid("message_id")
    conversation_id = fields.integer("conversation_id")
    channel = fields.choice("channel", CHANNELS)
    status = fields.choice("new_status", (*PROGRESS, FAILED))
    at = fields.timestamp("timestamp", required=False)
    details = fields.storable("details")
    fields.done()
    return StatusUpdate(
        uuid.UUID(present(message_id)),
        present(conversation_id),
        present(channel),
        present(status),
        at or datetime.now(UTC),
        details or {},
    )
