"""What the mocks tell the app, in Meta's formats (meta/notifications.py writes them): the
callbacks about a message an account accepted, and a user's message to the account.

About a message: WhatsApp `sent` at once, then `delivered` and `read` after their delays, or
`failed` (with its error) instead of both; Instagram an echo of the message (with its
`metadata`) at once, then a read receipt (Instagram sends no delivery receipts, and no failed
status at all). A user's message: WhatsApp a `messages[]` item from the user's wa_id with a
`contacts[]` profile; Instagram a `messaging[]` event from the user to the account.
"""

from __future__ import annotations

from typing import Any

import orjson

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.events import StatusError
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_message,
    instagram_notification,
    instagram_reaction,
    instagram_read,
    whatsapp_contact,
    whatsapp_message,
    whatsapp_notification,
    whatsapp_status,
)
from chat4all_workers.simulators.callbacks import Stage

USER_MESSAGE_TYPES = ("text", "reaction")


@frozen
class Delivery:
    """What the app hears of an accepted message, and when (seconds after it is scheduled)."""

    delivered_s: float
    read_s: float
    failure: StatusError | None = None  # WhatsApp: `failed` instead of delivered and read


def message_callbacks(
    channel: str,
    delivery: Delivery,
    *,
    account_id: str,
    provider_message_id: str,
    recipient: str,  # the user, as Meta names them (a wa_id on WhatsApp)
    text: str,
    callback_data: str | None,
) -> list[Stage]:
    """The chain of callbacks about one accepted message."""
    if channel == "whatsapp":

        def status(name: str, after_s: float, error: StatusError | None = None) -> Stage:
            def write(now_s: float) -> bytes:
                item = whatsapp_status(
                    provider_message_id,
                    name,
                    at_s=int(now_s),
                    recipient_id=recipient,
                    callback_data=callback_data,
                    error=error,
                )
                return orjson.dumps(
                    whatsapp_notification(phone_number_id=account_id, statuses=[item])
                )

            return Stage(after_s, write)

        if delivery.failure is not None:
            return [status("sent", 0.0), status("failed", delivery.delivered_s, delivery.failure)]
        return [
            status("sent", 0.0),
            status("delivered", delivery.delivered_s),
            status("read", delivery.read_s),
        ]

    def echo(now_s: float) -> bytes:
        event = instagram_echo(
            provider_message_id,
            customer=recipient,
            account_id=account_id,
            at_ms=int(now_s * 1000),
            metadata=callback_data,
            text=text,
        )
        return orjson.dumps(instagram_notification(account_id=account_id, events=[event]))

    def read(now_s: float) -> bytes:
        event = instagram_read(
            provider_message_id, customer=recipient, account_id=account_id, at_ms=int(now_s * 1000)
        )
        return orjson.dumps(instagram_notification(account_id=account_id, events=[event]))

    return [Stage(0.0, echo), Stage(delivery.read_s, read)]


def user_message(
    channel: str,
    *,
    account_id: str,
    user: str,  # a wa_id on WhatsApp, an IGSID on Instagram
    provider_message_id: str,
    kind: str,  # one of USER_MESSAGE_TYPES
    text: str,  # the text, or a reaction's emoji
    at_s: float,
    name: str,
    reacting_to: str = "",  # a reaction's message
) -> dict[str, Any]:
    """The notification of a user's message to the account."""
    if channel == "whatsapp":
        content = (
            {"message_id": reacting_to, "emoji": text} if kind == "reaction" else {"body": text}
        )
        item = whatsapp_message(
            provider_message_id, sender=user, at_s=int(at_s), kind=kind, content=content
        )
        return whatsapp_notification(
            phone_number_id=account_id,
            messages=[item],
            contacts=[whatsapp_contact(user, name=name)],
        )
    at_ms = int(at_s * 1000)
    if kind == "reaction":
        event = instagram_reaction(
            reacting_to, customer=user, account_id=account_id, at_ms=at_ms, emoji=text
        )
    else:
        event = instagram_message(
            provider_message_id, customer=user, account_id=account_id, at_ms=at_ms, text=text
        )
    return instagram_notification(account_id=account_id, events=[event])
