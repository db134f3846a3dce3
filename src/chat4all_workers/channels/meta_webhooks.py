"""Meta's webhooks for WhatsApp and Instagram: the signature, the verification GET, and the
payloads read into plain events. No I/O here; the `webhooks` role serves the HTTP, looks ids up
and produces what this module finds.

What Meta does, from its documentation (read for issue 14; the URLs are the sources):

- Verification. When a callback URL is configured in the app dashboard, Meta sends
  `GET <url>?hub.mode=subscribe&hub.challenge=<n>&hub.verify_token=<the token typed in the
  dashboard>`; the endpoint answers 200 with the challenge as the body when the token matches.
  https://developers.facebook.com/docs/graph-api/webhooks/getting-started/
- Signature. Every event notification is a POST of JSON signed with the app secret:
  `X-Hub-Signature-256: sha256=<lower-case hex HMAC-SHA256 of the raw body>`. It must be checked
  over the bytes as received, before parsing (re-serialised JSON does not match).
  (same page, "Validating Payloads")
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

import hashlib
import hmac
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

import orjson

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = b"sha256="
WHATSAPP_OBJECT = "whatsapp_business_account"
INSTAGRAM_OBJECT = "instagram"

# WhatsApp's status names -> the platform's (docs/contract.md section 3).
_WHATSAPP_STATUSES = {"sent": "SENT", "delivered": "DELIVERED", "read": "READ", "failed": "FAILED"}
# Message types whose object is media: carried as an attachment with the provider's media id.
_WHATSAPP_MEDIA = frozenset({"image", "audio", "video", "document", "sticker"})
_MAX_ID = 512  # a provider or account id longer than this is not one
_MAX_ERROR_TEXT = 1000
_MIN_TS_S = 0
_MAX_TS_S = 253_402_300_799  # 9999-12-31T23:59:59Z: what datetime can hold
_INT64 = 2**63
# A provider object kept as it came (`content`) is re-serialised into the record: orjson writes
# at most 254 levels, and no real message type nests more than a few.
_MAX_DEPTH = 32


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends with `body` (tests, benchmarks, the mocks)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the body's signature with `secret`; compared in constant time."""
    if not header or not secret:
        return False
    expected = (
        _SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    )
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


def challenge_answer(query: Mapping[str, str], verify_token: str) -> str | None:
    """The body to answer a verification GET with, or None to refuse it (403)."""
    if not verify_token or query.get("hub.mode") != "subscribe":
        return None
    token = query.get("hub.verify_token", "").encode("utf-8", "replace")
    if not hmac.compare_digest(token, verify_token.encode()):
        return None
    return query.get("hub.challenge") or None


@dataclass(frozen=True, slots=True)
class ProviderError:
    """Why the provider failed a message (WhatsApp `statuses[].errors[0]`)."""

    code: int | None
    title: str
    details: str


@dataclass(frozen=True, slots=True)
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
    error: ProviderError | None = None


@dataclass(frozen=True, slots=True)
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


@dataclass
class Parsed:
    """Everything one POST carried."""

    statuses: list[StatusEvent] = field(default_factory=list)
    inbound: list[InboundEvent] = field(default_factory=list)
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


# -- WhatsApp -------------------------------------------------------------------------------------


def parse_whatsapp(doc: Any, *, phone_number_id: str) -> Parsed:
    """A WhatsApp Cloud API notification; changes for another phone number than ours (when
    `phone_number_id` is set) are ignored as `foreign_account`."""
    parsed = Parsed()
    for where, entry_id, change in _changes(doc, WHATSAPP_OBJECT, parsed):
        field_name = change.get("field")
        value = change.get("value")
        if field_name != "messages":
            parsed.ignored.append(("other", "unsupported_field"))
            continue
        if not isinstance(value, dict):
            parsed.problems.append(f"{where}.value is not an object")
            continue
        metadata = value.get("metadata")
        account = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        if not _is_id(account):
            parsed.problems.append(f"{where}.value.metadata.phone_number_id is missing")
            continue
        statuses = _list_of(value, "statuses", f"{where}.value", parsed)
        messages = _list_of(value, "messages", f"{where}.value", parsed)
        errors = _list_of(value, "errors", f"{where}.value", parsed)
        if phone_number_id and account != phone_number_id:
            parsed.ignored += [("status", "foreign_account")] * len(statuses)
            parsed.ignored += [("inbound", "foreign_account")] * len(messages)
            continue
        for k, item in enumerate(statuses):
            _whatsapp_status(item, f"{where}.value.statuses[{k}]", parsed)
        names = _contact_names(value.get("contacts"))
        for k, item in enumerate(messages):
            _whatsapp_message(
                item, f"{where}.value.messages[{k}]", account, entry_id, names, parsed
            )
        for item in errors:
            error = _provider_error([item])
            parsed.provider_errors.append(
                f"whatsapp: ({error.code}) {error.title}: {error.details}"
            )
    return parsed


def _whatsapp_status(item: Any, where: str, parsed: Parsed) -> None:
    if not isinstance(item, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    provider_id, at = item.get("id"), _seconds(item.get("timestamp"))
    if not _is_id(provider_id):
        parsed.problems.append(f"{where}.id is missing or not an id")
        return
    if at is None:
        parsed.problems.append(f"{where}.timestamp is not Unix seconds")
        return
    raw_status = item.get("status")
    status = _WHATSAPP_STATUSES.get(raw_status) if isinstance(raw_status, str) else None
    if status is None:
        parsed.ignored.append(("status", "unknown_status"))
        return
    raw_callback = item.get("biz_opaque_callback_data")
    if raw_callback is None:
        parsed.ignored.append(("status", "no_callback_data"))
        return
    ids = callback_ids(raw_callback)
    if ids is None:
        parsed.ignored.append(("status", "bad_callback_data"))
        return
    error = _provider_error(item.get("errors")) if status == "FAILED" else None
    parsed.statuses.append(
        StatusEvent("status", "whatsapp", provider_id, status, at, *ids, error=error)
    )


def _whatsapp_message(
    item: Any, where: str, account: str, entry_id: str, names: dict[str, str], parsed: Parsed
) -> None:
    if not isinstance(item, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    provider_id, sender, kind = item.get("id"), item.get("from"), item.get("type")
    at = _seconds(item.get("timestamp"))
    if not (_is_id(provider_id) and _is_id(sender) and _is_id(kind)) or at is None:
        parsed.problems.append(f"{where} lacks a valid id, from, type or timestamp")
        return
    content = item.get(kind)
    content = content if isinstance(content, dict) else None
    if content is not None and _depth(content) > _MAX_DEPTH:
        parsed.problems.append(f"{where}.{kind[:40]} is nested deeper than {_MAX_DEPTH} levels")
        return
    text: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    if kind == "text" and content is not None:
        text = _text(content.get("body"))
        content = None
    elif kind in _WHATSAPP_MEDIA and content is not None:
        text = _text(content.get("caption"))
        attachments = (
            {
                "type": kind,
                "id": _text(content.get("id")),
                "url": None,
                "mime_type": _text(content.get("mime_type")),
                "filename": _text(content.get("filename")),
                "sha256": _text(content.get("sha256")),
            },
        )
        content = None
    elif kind == "button" and content is not None:
        text = _text(content.get("text"))
    context = item.get("context")
    reply_to = context.get("id") if isinstance(context, dict) else None
    parsed.inbound.append(
        InboundEvent(
            channel="whatsapp",
            provider_message_id=provider_id,
            account_id=account,
            entry_id=entry_id,
            sender=sender,
            sender_name=names.get(sender),
            at=at,
            type=kind,
            text=text,
            attachments=attachments,
            reply_to=reply_to if _is_id(reply_to) else None,
            content=_clean_json(content),
        )
    )


def _contact_names(contacts: Any) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in contacts if isinstance(contacts, list) else ():
        if isinstance(contact, dict) and _is_id(contact.get("wa_id")):
            profile = contact.get("profile")
            name = _text(profile.get("name")) if isinstance(profile, dict) else None
            if name is not None:
                names[contact["wa_id"]] = name
    return names


def _provider_error(errors: Any) -> ProviderError:
    """The first of `errors[]`, as far as it is readable (a failed status is FAILED anyway)."""
    first = errors[0] if isinstance(errors, list) and errors else {}
    first = first if isinstance(first, dict) else {}
    code = first.get("code") if _is_int64(first.get("code")) else None
    title = _text(first.get("title")) or _text(first.get("message")) or ""
    data = first.get("error_data")
    details = _text(data.get("details")) if isinstance(data, dict) else None
    return ProviderError(code, title[:_MAX_ERROR_TEXT], (details or "")[:_MAX_ERROR_TEXT])


# -- Instagram ------------------------------------------------------------------------------------


def parse_instagram(doc: Any, *, user_id: str) -> Parsed:
    """An Instagram Messaging notification; entries for another account than ours (when
    `user_id` is set) are ignored as `foreign_account`."""
    parsed = Parsed()
    if not _object_is(doc, INSTAGRAM_OBJECT, parsed):
        return parsed
    for i, entry in enumerate(_entries(doc, parsed)):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            parsed.problems.append(f"{where} is not an object")
            continue
        entry_id = entry.get("id")
        if not _is_id(entry_id):
            parsed.problems.append(f"{where}.id is missing or not an id")
            continue
        if "messaging" not in entry:  # comments, mentions, ... (the `changes` fields)
            parsed.ignored.append(("other", "unsupported_field"))
            continue
        events = _list_of(entry, "messaging", where, parsed)
        if user_id and entry_id != user_id:
            parsed.ignored += [("event", "foreign_account")] * len(events)
            continue
        for k, event in enumerate(events):
            _instagram_event(event, f"{where}.messaging[{k}]", entry_id, parsed)
    return parsed


def _instagram_event(event: Any, where: str, entry_id: str, parsed: Parsed) -> None:
    if not isinstance(event, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    sender, recipient = _party(event.get("sender")), _party(event.get("recipient"))
    at = _milliseconds(event.get("timestamp"))
    if sender is None or recipient is None or at is None:
        parsed.problems.append(f"{where} lacks a valid sender.id, recipient.id or timestamp")
        return
    message, read = event.get("message"), event.get("read")
    if isinstance(message, dict):
        mid = message.get("mid")
        if not _is_id(mid):
            parsed.problems.append(f"{where}.message.mid is missing or not an id")
        elif message.get("is_echo") is True:
            _instagram_echo(message, mid, at, parsed)
        elif message.get("is_deleted") is True:
            parsed.ignored.append(("inbound", "deleted"))
        else:
            parsed.inbound.append(_instagram_inbound(message, mid, sender, entry_id, at))
    elif isinstance(read, dict):
        mid = read.get("mid")
        if _is_id(mid):
            parsed.statuses.append(StatusEvent("read", "instagram", mid, "READ", at))
        else:
            parsed.ignored.append(("read", "no_mid"))
    elif message is not None or read is not None:
        parsed.problems.append(f"{where}.message or .read is not an object")
    else:  # reactions, postbacks, referrals, ...
        parsed.ignored.append(("other", "unsupported_event"))


def _instagram_echo(message: dict[str, Any], mid: str, at: datetime, parsed: Parsed) -> None:
    raw_callback = message.get("metadata")
    if raw_callback is None:  # sent from the Instagram app, not by us
        parsed.ignored.append(("echo", "no_callback_data"))
        return
    ids = callback_ids(raw_callback)
    if ids is None:
        parsed.ignored.append(("echo", "bad_callback_data"))
        return
    parsed.statuses.append(StatusEvent("echo", "instagram", mid, "SENT", at, *ids))


def _instagram_inbound(
    message: dict[str, Any], mid: str, sender: str, entry_id: str, at: datetime
) -> InboundEvent:
    attachments = []
    raw_attachments = message.get("attachments")
    for item in raw_attachments if isinstance(raw_attachments, list) else ():
        if isinstance(item, dict):
            payload = item.get("payload")
            url = _text(payload.get("url")) if isinstance(payload, dict) else None
            attachments.append(
                {"type": _text(item.get("type")), "id": None, "url": url, "mime_type": None,
                 "filename": None, "sha256": None}
            )  # fmt: skip
    text = _text(message.get("text"))
    reply = message.get("reply_to")
    reply_to = reply.get("mid") if isinstance(reply, dict) else None
    kind = "text" if text is not None and not attachments else "attachment"
    if message.get("is_unsupported") is True:
        kind = "unsupported"
    return InboundEvent(
        channel="instagram",
        provider_message_id=mid,
        account_id=entry_id,
        entry_id=entry_id,
        sender=sender,
        sender_name=None,
        at=at,
        type=kind,
        text=text,
        attachments=tuple(attachments),
        reply_to=reply_to if _is_id(reply_to) else None,
        content=None,
    )


# -- shared readers -------------------------------------------------------------------------------


def callback_ids(raw: Any) -> tuple[str, int] | None:
    """(message_id, conversation_id) from the opaque callback data our adapters set on a send
    (channels/base.py `OutboundMessage.callback_data`), or None if it is not ours."""
    if not isinstance(raw, str):
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    message_id, conversation_id = doc.get("message_id"), doc.get("conversation_id")
    if not isinstance(message_id, str) or not _is_int64(conversation_id):
        return None
    try:
        return str(uuid.UUID(message_id)), conversation_id
    except ValueError:
        return None


def _object_is(doc: Any, expected: str, parsed: Parsed) -> bool:
    if not isinstance(doc, dict):
        parsed.problems.append("body is not a JSON object")
        return False
    if doc.get("object") != expected:
        parsed.problems.append(f"object is {str(doc.get('object'))[:80]!r}, not {expected!r}")
        return False
    return True


def _entries(doc: dict[str, Any], parsed: Parsed) -> list[Any]:
    entries = doc.get("entry")
    if not isinstance(entries, list):
        parsed.problems.append("entry is not a list")
        return []
    return entries


def _changes(doc: Any, expected: str, parsed: Parsed) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, entry id, change) for every well-formed change of every entry."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    if not _object_is(doc, expected, parsed):
        return found
    for i, entry in enumerate(_entries(doc, parsed)):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            parsed.problems.append(f"entry[{i}] is not an object with an id")
            continue
        for j, change in enumerate(_list_of(entry, "changes", f"entry[{i}]", parsed)):
            if isinstance(change, dict):
                found.append((f"entry[{i}].changes[{j}]", entry["id"], change))
            else:
                parsed.problems.append(f"entry[{i}].changes[{j}] is not an object")
    return found


def _list_of(container: dict[str, Any], key: str, where: str, parsed: Parsed) -> list[Any]:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        parsed.problems.append(f"{where}.{key} is not a list")
        return []
    return value


def _party(value: Any) -> str | None:
    party_id = value.get("id") if isinstance(value, dict) else None
    return party_id if _is_id(party_id) else None


def _is_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID and "\x00" not in value


def _is_int64(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def _seconds(value: Any) -> datetime | None:
    """WhatsApp's timestamps: Unix seconds, as a string of digits (or a number)."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 12:
        value = int(value)
    if not _is_int64(value) or not _MIN_TS_S <= value <= _MAX_TS_S:
        return None
    return datetime.fromtimestamp(value, UTC)


def _milliseconds(value: Any) -> datetime | None:
    """Instagram's timestamps: Unix milliseconds."""
    if not _is_int64(value) or not _MIN_TS_S <= value // 1000 <= _MAX_TS_S:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


def _text(value: Any) -> str | None:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else None


def _depth(value: Any) -> int:
    """How deeply `value` nests, counted without recursion (a body may nest 1,000 levels)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > _MAX_DEPTH:
            return level
        deepest = max(deepest, level)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _clean_json(value: Any) -> Any:
    """A provider's object as it came (at most `_MAX_DEPTH` deep: see `_depth`), with NUL in
    its strings made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean_json(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


# -- writing notifications (the mocks, tests and benchmarks send what Meta would) -----------------


def whatsapp_status(
    provider_message_id: str,
    status: str,
    *,
    at_s: int,
    recipient_id: str,
    callback_data: str | None = None,
    error: ProviderError | None = None,
) -> dict[str, Any]:
    """One `statuses[]` item; `status` in WhatsApp's words (sent, delivered, read, failed)."""
    item: dict[str, Any] = {
        "id": provider_message_id,
        "status": status,
        "timestamp": str(at_s),
        "recipient_id": recipient_id,
    }
    if callback_data is not None:
        item["biz_opaque_callback_data"] = callback_data
    if error is not None:
        item["errors"] = [
            {"code": error.code, "title": error.title, "message": error.title,
             "error_data": {"details": error.details}}
        ]  # fmt: skip
    return item


def whatsapp_notification(
    *,
    phone_number_id: str,
    statuses: Sequence[dict[str, Any]] = (),
    messages: Sequence[dict[str, Any]] = (),
    contacts: Sequence[dict[str, Any]] = (),
    business_account_id: str = "102290129340398",
) -> dict[str, Any]:
    """A notification of one entry with one `messages` change."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    if statuses:
        value["statuses"] = list(statuses)
    if messages:
        value["messages"] = list(messages)
    if contacts:
        value["contacts"] = list(contacts)
    change = {"field": "messages", "value": value}
    return {"object": WHATSAPP_OBJECT, "entry": [{"id": business_account_id, "changes": [change]}]}


def instagram_read(mid: str, *, customer: str, account_id: str, at_ms: int) -> dict[str, Any]:
    """A `messaging[]` read receipt: the customer saw the conversation up to `mid`."""
    return {
        "sender": {"id": customer},
        "recipient": {"id": account_id},
        "timestamp": at_ms,
        "read": {"mid": mid},
    }


def instagram_echo(
    mid: str, *, customer: str, account_id: str, at_ms: int, metadata: str | None, text: str = ""
) -> dict[str, Any]:
    """A `messaging[]` echo of a message our account sent (with the send's `metadata`)."""
    message: dict[str, Any] = {"mid": mid, "text": text, "is_echo": True}
    if metadata is not None:
        message["metadata"] = metadata
    return {
        "sender": {"id": account_id},
        "recipient": {"id": customer},
        "timestamp": at_ms,
        "message": message,
    }


def instagram_notification(*, account_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A notification of one entry (our account) with `messaging[]` events."""
    entry = {"id": account_id, "time": 0, "messaging": list(events)}
    return {"object": INSTAGRAM_OBJECT, "entry": [entry]}
