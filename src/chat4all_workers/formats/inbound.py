"""The `inbound_messages` format (contract section 3): a message a user sent to one of our
WhatsApp numbers or Instagram accounts, written by the webhooks role, keyed `{channel}:{sender}`
so one sender's messages keep their order."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.meta.events import InboundEvent


def inbound_record(topic: str, message: InboundEvent, *, account: str | None) -> OutgoingRecord:
    """`account`: our key of the account the user wrote to (accounts/), so the platform knows
    which business it is for; None when the environment's app speaks for an id no account has."""
    value = {
        "channel": message.channel,
        "account": account,
        "provider_message_id": message.provider_message_id,
        "account_id": message.account_id,
        "entry_id": message.entry_id,
        "sender": message.sender,
        "sender_name": message.sender_name,
        "timestamp": message.at.isoformat(),
        "received_at": datetime.now(UTC).isoformat(),
        "type": message.type,
        "text": message.text,
        "attachments": list(message.attachments),
        "reply_to": message.reply_to,
        "content": message.content,
    }
    key = f"{message.channel}:{message.sender}".encode()
    return OutgoingRecord(topic, orjson.dumps(value), key)
