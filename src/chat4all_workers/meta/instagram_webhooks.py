"""Instagram Messaging webhooks (`"object": "instagram"`) read into events (meta/events.py: the
format, its sources, and the rules).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from chat4all_workers.meta.callback import our_callback
from chat4all_workers.meta.events import (
    INSTAGRAM_OBJECT,
    InboundEvent,
    Parsed,
    StatusEvent,
    WindowEvent,
    entries,
    is_id,
    list_of,
    object_is,
    party_id,
    text_of,
    unix_milliseconds,
)


def parse_instagram(doc: Any, *, ours: Callable[[str], bool]) -> Parsed:
    """An Instagram Messaging notification; entries for an account id that is not `ours` (none
    of our accounts, or not one of the app that signed the notification) are ignored as
    `foreign_account`."""
    parsed = Parsed()
    if not object_is(doc, INSTAGRAM_OBJECT, parsed):
        return parsed
    for i, entry in enumerate(entries(doc, parsed)):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            parsed.problems.append(f"{where} is not an object")
            continue
        entry_id = entry.get("id")
        if not is_id(entry_id):
            parsed.problems.append(f"{where}.id is missing or not an id")
            continue
        if "messaging" not in entry:  # comments, mentions, ... (the `changes` fields)
            parsed.ignored.append(("other", "unsupported_field"))
            continue
        events = list_of(entry, "messaging", where, parsed)
        if not ours(entry_id):
            parsed.ignored += [("event", "foreign_account")] * len(events)
            continue
        for k, event in enumerate(events):
            _instagram_event(event, f"{where}.messaging[{k}]", entry_id, parsed)
    return parsed


def _instagram_event(event: Any, where: str, entry_id: str, parsed: Parsed) -> None:
    if not isinstance(event, dict):
        parsed.problems.append(f"{where} is not an object")
        return
    sender, recipient = party_id(event.get("sender")), party_id(event.get("recipient"))
    at = unix_milliseconds(event.get("timestamp"))
    if sender is None or recipient is None or at is None:
        parsed.problems.append(f"{where} lacks a valid sender.id, recipient.id or timestamp")
        return
    message, read = event.get("message"), event.get("read")
    if isinstance(message, dict):
        mid = message.get("mid")
        if not is_id(mid):
            parsed.problems.append(f"{where}.message.mid is missing or not an id")
        elif message.get("is_echo") is True:
            _instagram_echo(message, mid, at, entry_id, parsed)
        elif message.get("is_deleted") is True:
            parsed.ignored.append(("inbound", "deleted"))
        else:
            parsed.inbound.append(_instagram_inbound(message, mid, sender, entry_id, at))
            parsed.windows.append(WindowEvent("instagram", entry_id, sender, at))
    elif isinstance(read, dict):
        mid = read.get("mid")
        if is_id(mid):
            parsed.statuses.append(
                StatusEvent("read", "instagram", mid, "READ", at, account=entry_id)
            )
        else:
            parsed.ignored.append(("read", "no_mid"))
    elif message is not None or read is not None:
        parsed.problems.append(f"{where}.message or .read is not an object")
    else:  # reactions, postbacks, referrals, ...
        if isinstance(event.get("reaction"), dict) or isinstance(event.get("postback"), dict):
            # Not a message of ours to store, but the user acted: the window opens.
            parsed.windows.append(WindowEvent("instagram", entry_id, sender, at))
        parsed.ignored.append(("other", "unsupported_event"))


def _instagram_echo(
    message: dict[str, Any], mid: str, at: datetime, entry_id: str, parsed: Parsed
) -> None:
    callback = our_callback(message.get("metadata"), "echo", parsed.ignored)
    if callback is None:
        return
    ids = callback.message_id, callback.conversation_id
    parsed.statuses.append(
        StatusEvent("echo", "instagram", mid, "SENT", at, *ids, account=entry_id)
    )


def _instagram_inbound(
    message: dict[str, Any], mid: str, sender: str, entry_id: str, at: datetime
) -> InboundEvent:
    attachments = []
    raw_attachments = message.get("attachments")
    for item in raw_attachments if isinstance(raw_attachments, list) else ():
        if isinstance(item, dict):
            payload = item.get("payload")
            url = text_of(payload.get("url")) if isinstance(payload, dict) else None
            attachments.append(
                {"type": text_of(item.get("type")), "id": None, "url": url, "mime_type": None,
                 "filename": None, "sha256": None}
            )  # fmt: skip
    text = text_of(message.get("text"))
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
        reply_to=reply_to if is_id(reply_to) else None,
        content=None,
    )
