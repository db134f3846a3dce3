"""The opaque callback data our sends carry, which Meta echoes in its webhooks.

WhatsApp echoes `biz_opaque_callback_data` in every status webhook of the message (at most 512
characters: messages reference); Instagram echoes `message.metadata` in the echo of a message we
sent. Both hold the same small JSON object, so a status names the platform's message without any
lookup, and the record the send came from, so a failure reported later by webhook finds the
original record to dead-letter or send again:
`{"message_id": "<uuid>", "conversation_id": <bigint>, "origin": "<topic>:<partition>:<offset>"}`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.events import is_int64, json_object

_MAX_ORIGIN = 300
# A message id as our sends write it (str(uuid.UUID)): taken as it is, without building a UUID
# and printing it again (1.9 us against the pattern's 0.3; 2 % of the webhooks role's profile).
# Any other spelling is normalised.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@frozen(slots=True)
class Callback:
    message_id: str
    conversation_id: int
    origin: str | None = None  # "{topic}:{partition}:{offset}" of the record that was sent


def callback_data(message_id: str, conversation_id: int, *, origin: str = "") -> str:
    """What a send sets as its callback data (WhatsApp) or metadata (Instagram)."""
    doc: dict[str, Any] = {"message_id": message_id, "conversation_id": conversation_id}
    if origin:
        doc["origin"] = origin
    return orjson.dumps(doc).decode()


def read_callback(raw: Any) -> Callback | None:
    """The callback data our adapters set on a send, or None if it is not ours."""
    doc = json_object(raw) if isinstance(raw, str) else None
    if doc is None:
        return None
    message_id, conversation_id = doc.get("message_id"), doc.get("conversation_id")
    if not isinstance(message_id, str) or not is_int64(conversation_id):
        return None
    if _CANONICAL_UUID.fullmatch(message_id) is None:
        try:
            message_id = str(uuid.UUID(message_id))
        except ValueError:
            return None
    origin = doc.get("origin")
    valid = isinstance(origin, str) and 0 < len(origin) <= _MAX_ORIGIN and origin.count(":") >= 2
    return Callback(message_id, conversation_id, origin if valid else None)


def our_callback(raw: Any, kind: str, ignored: list[tuple[str, str]]) -> Callback | None:
    """The callback data of a webhook event (`kind`) about a message, or None, said in `ignored`:
    `no_callback_data` when it carries none (sent from Meta's own apps, not by us),
    `bad_callback_data` when what it carries is not ours."""
    if raw is None:
        ignored.append((kind, "no_callback_data"))
        return None
    callback = read_callback(raw)
    if callback is None:
        ignored.append((kind, "bad_callback_data"))
    return callback


def callback_ids(raw: Any) -> tuple[str, int] | None:
    """(message_id, conversation_id) of our callback data, or None if it is not ours."""
    callback = read_callback(raw)
    return None if callback is None else (callback.message_id, callback.conversation_id)


def parse_origin(origin: str) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of an origin, or None for one that is not."""
    parts = origin.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    topic, partition, offset = parts
    if not (partition.isascii() and partition.isdigit() and offset.isascii() and offset.isdigit()):
        return None
    return topic, int(partition), int(offset)
