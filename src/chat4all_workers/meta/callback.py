"""The opaque callback data our sends carry, which Meta echoes in its webhooks.

WhatsApp echoes `biz_opaque_callback_data` in every status webhook of the message; Instagram echoes
`message.metadata` in the echo of a message we sent. Both hold the same small JSON object, so a
status names the platform's message without any lookup:
`{"message_id": "<uuid>", "conversation_id": <bigint>}`.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from chat4all_workers.meta.events import is_int64


def callback_data(message_id: str, conversation_id: int) -> str:
    """What a send sets as its callback data (WhatsApp) or metadata (Instagram)."""
    return orjson.dumps({"message_id": message_id, "conversation_id": conversation_id}).decode()


def callback_ids(raw: Any) -> tuple[str, int] | None:
    """(message_id, conversation_id) from the opaque callback data our adapters set on a send
    (`callback_data`), or None if it is not ours."""
    if not isinstance(raw, str):
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    message_id, conversation_id = doc.get("message_id"), doc.get("conversation_id")
    if not isinstance(message_id, str) or not is_int64(conversation_id):
        return None
    try:
        return str(uuid.UUID(message_id)), conversation_id
    except ValueError:
        return None
