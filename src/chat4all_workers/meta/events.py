"""What Meta's webhooks carry, read into plain events, and the readers the two channels' parsers
share (meta/whatsapp_webhooks.py, meta/instagram_webhooks.py). No I/O here; the `webhooks` role
serves the HTTP, looks ids up and produces what the parsers find.

What Meta does, from its documentation (read for issue 14; the URLs are the sources):

- Signature and verification: meta/signature.py.
- Delivery. A notification answered with anything but 200 (or not answered in time) is sent
  again, with decreasing frequency, for hours to days (36 hours for Graph API webhooks and up to
  7 days for WhatsApp are the figures usually quoted; the search for this issue did not reach
  Meta's own sentence, so take the window as "long", not as a number), and the same
  notification may arrive more than once even after a 200. So: 200 only once what it carries
  is stored, 5xx otherwise, and every consumer of what it carries must be idempotent. One POST
  may batch several entries, several changes per entry and several statuses or messages per
  change.
- WhatsApp Cloud API (`"object": "whatsapp_business_account"`): `entry[].changes[]` with
  `field: "messages"` and a `value` holding `metadata.phone_number_id` (our number), and
  `statuses[]` (`id` = the wamid the send returned, `status` sent | delivered | read | failed,
  `timestamp` in Unix seconds as a string, `recipient_id`, `biz_opaque_callback_data` as the send
  set it, and for failed `errors[]` of `{code, title, message, error_data: {details}}`), or
  `messages[]` (`from`, `id`, `timestamp`, `type` and a type-named object such as
  `text: {body}`, `image: {id, mime_type, sha256, caption}`, `context: {id}` for a reply) with
  `contacts[]` (`wa_id`, `profile.name`), or `errors[]` for an out-of-band account error.
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/status/
  https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages/errors
- Instagram Messaging (`"object": "instagram"`): `entry[]` with `id` (our Instagram
  professional account) and `messaging[]` events of `sender.id`, `recipient.id`, `timestamp`
  (Unix milliseconds) and one of `message` (`mid`, `text`, `attachments[] {type, payload.url}`,
  `reply_to.mid`; `is_echo: true` when WE sent it, then echoing the `metadata` our send set) or
  `read` (`mid`: the `messaging_seen` field: the recipient saw the conversation up to that
  message). Instagram sends no delivery receipts, and its echoes come with the `messages` field.
  https://developers.facebook.com/documentation/business-messaging/instagram-messaging/webhooks
  (Messenger's `message_reads` states the same "read up to" meaning with a watermark:
  https://developers.facebook.com/docs/messenger-platform/reference/webhook-events/message-reads/)

Reading is strict about the shape and lenient about content: a body that violates the format
(not an object, `entry` not a list, a status without an id) is a *problem*, reported so the role
dead-letters the body; an event that is well formed but not ours or not something we track
(another phone number, no callback data, a status or event type we do not map) is *ignored*
with a reason, counted, never an error. Text is kept as sent except NUL, which PostgreSQL cannot
store and no chat message means: it becomes U+FFFD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

import orjson

from chat4all_workers.frozen import frozen

WHATSAPP_OBJECT = "whatsapp_business_account"
INSTAGRAM_OBJECT = "instagram"
_MAX_ID = 512  # a provider or account id longer than this is not one
MAX_ERROR_TEXT = 1000
_MIN_TS_S = 0
_MAX_TS_S = 253_402_300_799  # 9999-12-31T23:59:59Z: what datetime can hold
_INT64 = 2**63
# A provider object kept as it came (`content`) is re-serialised into the record: orjson writes
# at most 254 levels, and no real message type nests more than a few.
MAX_DEPTH = 32


@frozen(slots=True)
class StatusError:
    """Why the provider failed a message (WhatsApp `statuses[].errors[0]`)."""

    code: int | None
    title: str
    details: str


@frozen(slots=True)
class StatusEvent:
    """A provider's word about one of our messages.

    `kind`: "status" (WhatsApp `statuses[]`), "read" (an Instagram read receipt: only the mid is
    known, the role looks our ids up) or "echo" (Instagram's copy of a message we sent: SENT).
    `message_id`/`conversation_id` come from the callback data we set on the send; None for a
    read receipt until the role has found them.
    """

    kind: str
    channel: str
    provider_message_id: str
    status: str
    at: datetime
    message_id: str | None = None
    conversation_id: int | None = None
    error: StatusError | None = None
    # The record the send came from ("{topic}:{partition}:{offset}", our callback data), and
    # the user it was for: a failure reported here is ended from them (intake/failures.py).
    origin: str | None = None
    recipient: str | None = None
    # Our account it came for (the phone number id, the Instagram account id).
    account: str | None = None


@frozen(slots=True)
class InboundEvent:
    """A message a user sent to our number or account (docs/contract.md, `inbound_messages`)."""

    channel: str
    provider_message_id: str
    account_id: str
    entry_id: str
    sender: str
    sender_name: str | None
    at: datetime
    type: str
    text: str | None
    attachments: tuple[dict[str, Any], ...]
    reply_to: str | None
    content: dict[str, Any] | None


@frozen(slots=True)
class WindowEvent:
    """A user wrote to one of our accounts (or did what opens a window: meta/windows.py)."""

    channel: str
    account: str  # our phone number id / Instagram account id
    user: str  # wa_id / Instagram-scoped id
    at: datetime


@dataclass
class Parsed:
    """Everything one POST carried."""

    statuses: list[StatusEvent] = field(default_factory=list)
    inbound: list[InboundEvent] = field(default_factory=list)
    # Every user action that opens a conversation window (the inbound messages among them).
    windows: list[WindowEvent] = field(default_factory=list)
    # (kind, reason) per event left alone: counted by the role, never an error.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    # Out-of-band errors the provider reported (WhatsApp `value.errors[]`): logged by the role.
    provider_errors: list[str] = field(default_factory=list)
    # Format violations: the role dead-letters the body naming them.
    problems: list[str] = field(default_factory=list)


def parse_body(body: bytes) -> tuple[Any, str | None]:
    """The JSON document of a body, or (None, what is wrong with it)."""
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, f"body is not JSON: {exc}"


def json_object(raw: str | bytes) -> dict[str, Any] | None:
    """The JSON object `raw` holds, or None when it holds no JSON, or JSON of another kind."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def object_is(doc: Any, expected: str, parsed: Parsed) -> bool:
    if not isinstance(doc, dict):
        parsed.problems.append("body is not a JSON object")
        return False
    if doc.get("object") != expected:
        parsed.problems.append(f"object is {str(doc.get('object'))[:80]!r}, not {expected!r}")
        return False
    return True


def entries(doc: dict[str, Any], parsed: Parsed) -> list[Any]:
    entries = doc.get("entry")
    if not isinstance(entries, list):
        parsed.problems.append("entry is not a list")
        return []
    return entries


def changes(doc: Any, expected: str, parsed: Parsed) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, entry id, change) for every well-formed change of every entry."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    if not object_is(doc, expected, parsed):
        return found
    for i, entry in enumerate(entries(doc, parsed)):
        if not isinstance(entry, dict) or not is_id(entry.get("id")):
            parsed.problems.append(f"entry[{i}] is not an object with an id")
            continue
        for j, change in enumerate(list_of(entry, "changes", f"entry[{i}]", parsed)):
            if isinstance(change, dict):
                found.append((f"entry[{i}].changes[{j}]", entry["id"], change))
            else:
                parsed.problems.append(f"entry[{i}].changes[{j}] is not an object")
    return found


def list_of(container: dict[str, Any], key: str, where: str, parsed: Parsed) -> list[Any]:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        parsed.problems.append(f"{where}.{key} is not a list")
        return []
    return value


def party_id(value: Any) -> str | None:
    party_id = value.get("id") if isinstance(value, dict) else None
    return party_id if is_id(party_id) else None


def is_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID and "\x00" not in value


def is_int64(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def unix_seconds(value: Any) -> datetime | None:
    """WhatsApp's timestamps: Unix seconds, as a string of digits (or a number). The last
    string read is remembered with its time: the statuses of a busy second share it, and
    reading one cost 1.6 us against 0.3 (timeit, 2026-12-07)."""
    global _last_seconds
    if type(value) is str:
        if value == _last_seconds[0]:
            return _last_seconds[1]
        text = value
        ascii_digits = value.isascii() and value.isdigit()
        value = int(value) if ascii_digits and len(value) <= 12 else None
        if value is None or not _MIN_TS_S <= value <= _MAX_TS_S:
            return None
        _last_seconds = (text, datetime.fromtimestamp(value, UTC))
        return _last_seconds[1]
    if not is_int64(value) or not _MIN_TS_S <= value <= _MAX_TS_S:
        return None
    return datetime.fromtimestamp(value, UTC)


# The last string `unix_seconds` read, and its time (a datetime is immutable: shared safely).
_last_seconds: tuple[str, datetime | None] = ("", None)


def unix_milliseconds(value: Any) -> datetime | None:
    """Instagram's timestamps: Unix milliseconds."""
    if not is_int64(value) or not _MIN_TS_S <= value // 1000 <= _MAX_TS_S:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


def text_of(value: Any) -> str | None:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else None


def depth(value: Any) -> int:
    """How deeply `value` nests, counted without recursion (a body may nest 1,000 levels)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_DEPTH:
            return level
        deepest = max(deepest, level)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def clean_json(value: Any) -> Any:
    """A provider's object as it came (at most `MAX_DEPTH` deep: see `depth`), with NUL in
    its strings made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {clean_json(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value
