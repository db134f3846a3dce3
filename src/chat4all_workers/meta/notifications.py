"""Writers of Meta's webhook payloads: what the mocks, tests and benchmarks send, as Meta would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chat4all_workers.meta.events import INSTAGRAM_OBJECT, WHATSAPP_OBJECT, StatusError

# `errors[].href` of a failed status: "Link to error code documentation", as Meta's example
# writes it (the status webhook reference).
ERROR_CODES_HREF = "/documentation/business-messaging/whatsapp/support/error-codes"


def whatsapp_status(
    provider_message_id: str,
    status: str,
    *,
    at_s: int,
    recipient_id: str,
    callback_data: str | None = None,
    error: StatusError | None = None,
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
             "error_data": {"details": error.details}, "href": ERROR_CODES_HREF}
        ]  # fmt: skip
    return item


def whatsapp_message(
    provider_message_id: str, *, sender: str, at_s: int, kind: str, content: dict[str, Any]
) -> dict[str, Any]:
    """One `messages[]` item: a user's message (`sender` their wa_id), `content` the object
    named by its type (`text`: {"body"}, `reaction`: {"message_id", "emoji"}, ...)."""
    return {
        "from": sender,
        "id": provider_message_id,
        "timestamp": str(at_s),
        "type": kind,
        kind: content,
    }


def whatsapp_contact(wa_id: str, *, name: str) -> dict[str, Any]:
    """One `contacts[]` item: the user a message came from, with their profile name."""
    return {"profile": {"name": name}, "wa_id": wa_id}


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


def instagram_message(
    mid: str, *, customer: str, account_id: str, at_ms: int, text: str
) -> dict[str, Any]:
    """A `messaging[]` event: a user's text message to our account."""
    return {
        "sender": {"id": customer},
        "recipient": {"id": account_id},
        "timestamp": at_ms,
        "message": {"mid": mid, "text": text},
    }


def instagram_reaction(
    mid: str, *, customer: str, account_id: str, at_ms: int, emoji: str, reaction: str = "love"
) -> dict[str, Any]:
    """A `messaging[]` event: the user reacted to message `mid` (the `message_reactions`
    field, in Messenger's shape)."""
    return {
        "sender": {"id": customer},
        "recipient": {"id": account_id},
        "timestamp": at_ms,
        "reaction": {"mid": mid, "action": "react", "reaction": reaction, "emoji": emoji},
    }


def instagram_notification(*, account_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A notification of one entry (our account) with `messaging[]` events."""
    entry = {"id": account_id, "time": 0, "messaging": list(events)}
    return {"object": INSTAGRAM_OBJECT, "entry": [entry]}
