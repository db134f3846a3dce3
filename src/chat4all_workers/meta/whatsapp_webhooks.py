"""WhatsApp Cloud API webhooks (`"object": "whatsapp_business_account"`) read into events
(meta/events.py: the format, its sources, and the rules: strict about the shape, lenient about
content).

The notification Meta sends most, statuses of our sends to one of our numbers and nothing else,
is read in one pass (`_usual`); any other is read field by field (`_read_fully`), which names
where each problem is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from chat4all_workers.meta.callback import Callback, our_callback, read_callback
from chat4all_workers.meta.events import (
    MAX_DEPTH,
    MAX_ERROR_TEXT,
    WHATSAPP_OBJECT,
    InboundEvent,
    Parsed,
    StatusError,
    StatusEvent,
    WindowEvent,
    changes,
    clean_json,
    depth,
    is_id,
    is_int64,
    list_of,
    text_of,
    unix_seconds,
)

# WhatsApp's status names -> the platform's (docs/contract.md section 3).
_WHATSAPP_STATUSES = {"sent": "SENT", "delivered": "DELIVERED", "read": "READ", "failed": "FAILED"}
# Message types whose object is media: carried as an attachment with the provider's media id.
_WHATSAPP_MEDIA = frozenset({"image", "audio", "video", "document", "sticker"})


def parse_whatsapp(doc: Any, *, ours: Callable[[str], bool]) -> Parsed:
    """A WhatsApp Cloud API notification; changes for a phone number id that is not `ours`
    (none of our accounts, or not one of the app that signed the notification) are ignored as
    `foreign_account`."""
    usual = _usual(doc, ours)
    return usual if usual is not None else _read_fully(doc, ours)


def _usual(doc: Any, ours: Callable[[str], bool]) -> Parsed | None:
    """The usual notification read in one pass: one entry with one `messages` change of one of
    our numbers, carrying statuses and nothing else (no message, no `errors`), each status well
    formed, of a known name, with our callback data. None for any other notification, which
    `_read_fully` then reads.

    The webhooks role reads every notification, and reading the usual one field by field
    (naming where each problem would be, per entry, change and status) cost 9.2 us for one
    status, against 4.0 us for the whole of bench/webhook_floor.py's reading of it; read here,
    6.9 (timeit, best of 9 in turns, 2026-12-07). The rules are `_read_fully`'s:
    tests/meta/test_whatsapp_webhooks.py holds the two readings equal at every node of a usual
    notification, each replaced by values of every kind."""
    if type(doc) is not dict or doc.get("object") != WHATSAPP_OBJECT:
        return None
    entries = doc.get("entry")
    if type(entries) is not list or len(entries) != 1:
        return None
    entry = entries[0]
    if type(entry) is not dict or not is_id(entry.get("id")):
        return None
    entry_changes = entry.get("changes")
    if type(entry_changes) is not list or len(entry_changes) != 1:
        return None
    change = entry_changes[0]
    value = change.get("value") if type(change) is dict else None
    if type(value) is not dict or change.get("field") != "messages":
        return None
    metadata, items = value.get("metadata"), value.get("statuses")
    account = metadata.get("phone_number_id") if type(metadata) is dict else None
    if type(items) is not list or not items or not is_id(account):
        return None
    if value.get("messages") is not None or value.get("errors") is not None or not ours(account):
        return None
    parsed = Parsed()
    for item in items:
        if type(item) is not dict:
            return None
        provider_id, raw_status = item.get("id"), item.get("status")
        status = _WHATSAPP_STATUSES.get(raw_status) if type(raw_status) is str else None
        if status is None or not is_id(provider_id):
            return None
        at = unix_seconds(item.get("timestamp"))
        callback = read_callback(item.get("biz_opaque_callback_data"))
        if at is None or callback is None:
            return None
        parsed.statuses.append(_status_event(item, account, provider_id, status, at, callback))
    return parsed


def _read_fully(doc: Any, ours: Callable[[str], bool]) -> Parsed:
    """Any notification, read field by field: each problem named with where it is."""
    parsed = Parsed()
    for where, entry_id, change in changes(doc, WHATSAPP_OBJECT, parsed):
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
        if not is_id(account):
            parsed.problems.append(f"{where}.value.metadata.phone_number_id is missing")
            continue
        statuses = list_of(value, "statuses", f"{where}.value", parsed)
        messages = list_of(value, "messages", f"{where}.value", parsed)
        errors = list_of(value, "errors", f"{where}.value", parsed)
        if not ours(account):
            parsed.ignored += [("status", "foreign_account")] * len(statuses)
            parsed.ignored += [("inbound", "foreign_account")] * len(messages)
            continue
        for k, item in enumerate(statuses):
            _whatsapp_status(item, f"{where}.value.statuses[{k}]", account, parsed)
        names = _contact_names(value.get("contacts"))
        for k, item in enumerate(messages):
            _whatsapp_message(
                item, f"{where}.value.messages[{k}]", account, entry_id, names, parsed
            )
        for item in errors:
            error = _status_error([item])
            parsed.provider_errors.append(
                f"whatsapp: ({error.code}) {error.title}: {error.details}"
            )
    return parsed


def _whatsapp_status(item: Any, where: str, account: str, parsed: Parsed) -> None:
    if not isinstance(item, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    provider_id, at = item.get("id"), unix_seconds(item.get("timestamp"))
    if not is_id(provider_id):
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
    callback = our_callback(item.get("biz_opaque_callback_data"), "status", parsed.ignored)
    if callback is None:
        return
    parsed.statuses.append(_status_event(item, account, provider_id, status, at, callback))


def _status_event(
    item: dict[str, Any],
    account: str,
    provider_id: str,
    status: str,
    at: datetime,
    callback: Callback,
) -> StatusEvent:
    """A status whose id, name, time and callback data are read: its error (a failed one's)
    and recipient read leniently."""
    error = _status_error(item.get("errors")) if status == "FAILED" else None
    recipient = item.get("recipient_id")
    return StatusEvent(
        "status",
        "whatsapp",
        provider_id,
        status,
        at,
        callback.message_id,
        callback.conversation_id,
        error=error,
        origin=callback.origin,
        recipient=recipient if is_id(recipient) else None,
        account=account,
    )


def _whatsapp_message(
    item: Any, where: str, account: str, entry_id: str, names: dict[str, str], parsed: Parsed
) -> None:
    if not isinstance(item, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    provider_id, sender, kind = item.get("id"), item.get("from"), item.get("type")
    at = unix_seconds(item.get("timestamp"))
    if not (is_id(provider_id) and is_id(sender) and is_id(kind)) or at is None:
        parsed.problems.append(f"{where} lacks a valid id, from, type or timestamp")
        return
    content = item.get(kind)
    content = content if isinstance(content, dict) else None
    if content is not None and depth(content) > MAX_DEPTH:
        parsed.problems.append(f"{where}.{kind[:40]} is nested deeper than {MAX_DEPTH} levels")
        return
    text: str | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    if kind == "text" and content is not None:
        text = text_of(content.get("body"))
        content = None
    elif kind in _WHATSAPP_MEDIA and content is not None:
        text = text_of(content.get("caption"))
        attachments = (
            {
                "type": kind,
                "id": text_of(content.get("id")),
                "url": None,
                "mime_type": text_of(content.get("mime_type")),
                "filename": text_of(content.get("filename")),
                "sha256": text_of(content.get("sha256")),
            },
        )
        content = None
    elif kind == "button" and content is not None:
        text = text_of(content.get("text"))
    context = item.get("context")
    reply_to = context.get("id") if isinstance(context, dict) else None
    # Any message of the user opens the window, whatever its type (a reaction, a button reply).
    parsed.windows.append(WindowEvent("whatsapp", account, sender, at))
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
            reply_to=reply_to if is_id(reply_to) else None,
            content=clean_json(content),
        )
    )


def _contact_names(contacts: Any) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in contacts if isinstance(contacts, list) else ():
        if isinstance(contact, dict) and is_id(contact.get("wa_id")):
            profile = contact.get("profile")
            name = text_of(profile.get("name")) if isinstance(profile, dict) else None
            if name is not None:
                names[contact["wa_id"]] = name
    return names


def _status_error(errors: Any) -> StatusError:
    """The first of `errors[]`, as far as it is readable (a failed status is FAILED anyway)."""
    first = errors[0] if isinstance(errors, list) and errors else {}
    first = first if isinstance(first, dict) else {}
    code = first.get("code") if is_int64(first.get("code")) else None
    title = text_of(first.get("title")) or text_of(first.get("message")) or ""
    data = first.get("error_data")
    details = text_of(data.get("details")) if isinstance(data, dict) else None
    return StatusError(code, title[:MAX_ERROR_TEXT], (details or "")[:MAX_ERROR_TEXT])
