"""`chat4all-workers send`: a message written exactly as the platform's API writes it.

The API commits a `messages` row (status ACCEPTED) and its `message.created` outbox event in ONE
transaction (the transactional outbox): the outbox role publishes the event to
`message_processing` (its route table), and from there the router sends it. Writing anything
else (a record produced straight to Kafka, say) would skip the outbox and prove less, so this is
the same two INSERTs, with the event's payload in the contract's `message_processing` format,
checked by the router's own reader (`roles/message.py`) before anything is written.

What a user can get wrong is a `BadInputError` (one line, exit 2): an unknown channel, a channel
without a recipient, an empty text, a caption without a file, a file that does not exist or is not
COMPLETED (checked inside the transaction, so nothing is written).

Recipients: `--to channel=recipient`. Without one, a channel whose API is a local mock (its base
URL on loopback: `make run`) gets a demo recipient the mocks accept; a real API never does, so a
message is never sent to a made-up number by accident.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from chat4all_workers.config import CHANNELS, Settings
from chat4all_workers.db.files import get_file
from chat4all_workers.errors import InvalidRecordError
from chat4all_workers.formats.message import ALL, parse_message
from chat4all_workers.frozen import frozen
from chat4all_workers.roles.router import RouterSettings

# What the mocks accept (anything without "invalid"); the contract's example recipients.
DEMO_RECIPIENTS = {"whatsapp": "+5511999990000", "instagram": "17841400000000000"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A fresh conversation: random ids in a range of their own, far from small hand-made ones.
_CONVERSATION_BASE = 9_000_000_000
_CONVERSATION_SPAN = 999_999_999


class BadInputError(ValueError):
    """A `send` the user got wrong: one line, exit 2, nothing written."""


@frozen
class NewMessage:
    """One message as the API would write it."""

    message_id: uuid.UUID
    conversation_id: int
    sender_id: int | None
    payload: dict[
        str, Any
    ]  # {"type": "text", "content"} | {"type": "file", "file_id"[, "content"]}
    channels: tuple[str, ...]
    recipients: dict[str, str]
    created_at: datetime
    account: str | None = None  # the sending account's key on every channel (None: default)

    @property
    def file_id(self) -> uuid.UUID | None:
        raw = self.payload.get("file_id")
        return uuid.UUID(raw) if isinstance(raw, str) else None

    def accounts_by_channel(self) -> dict[str, str]:
        """The account per channel (none: each channel's default)."""
        return {} if self.account is None else dict.fromkeys(self.channels, self.account)

    def record_value(self) -> dict[str, Any]:
        """The `message_processing` value (contract section 3): the outbox event's payload."""
        value: dict[str, Any] = {
            "message_id": str(self.message_id),
            "conversation_id": self.conversation_id,
            "payload": self.payload,
            "channels": list(self.channels),
            "recipients": self.recipients,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }
        if self.sender_id is not None:
            value["sender_id"] = self.sender_id
        if self.account is not None:
            value["account"] = self.account
        return value


@frozen
class Written:
    message: NewMessage
    event_id: uuid.UUID


def compose(
    settings: Settings,
    *,
    text: str | None,
    file_id: uuid.UUID | None,
    caption: str | None,
    channels: Sequence[str],
    to: Sequence[str],
    conversation_id: int | None,
    sender_id: int | None,
    account: str | None = None,
) -> NewMessage:
    """The message the arguments describe, checked as the router will read it; BadInputError
    says what is wrong."""
    if text is not None and not text:
        raise BadInputError("--text is empty (the router refuses an empty text)")
    if caption is not None and file_id is None:
        raise BadInputError("--caption goes with --file-id (a text message has no caption)")
    chosen = _channels(settings, channels)
    recipients = _recipients(settings, chosen, to)
    payload: dict[str, Any]
    if file_id is not None:
        payload = {"type": "file", "file_id": str(file_id)}
        if caption:
            payload["content"] = caption
    else:
        payload = {"type": "text", "content": text or ""}
    message = NewMessage(
        message_id=uuid.uuid4(),
        conversation_id=(
            conversation_id
            if conversation_id is not None
            else _CONVERSATION_BASE + secrets.randbelow(_CONVERSATION_SPAN)
        ),
        sender_id=sender_id,
        payload=payload,
        channels=chosen,
        recipients=recipients,
        created_at=datetime.now(UTC),
        account=account,
    )
    try:  # the router's own reader: what it would dead-letter is refused here
        parse_message(
            orjson.dumps(message.record_value()), settings.section(RouterSettings).all_channels
        )
    except InvalidRecordError as exc:
        raise BadInputError(str(exc)) from None
    return message


def _channels(settings: Settings, names: Sequence[str]) -> tuple[str, ...]:
    """`--channel` values (repeated or comma-separated, `all` for every configured channel),
    in order, each once; default `all`."""
    chosen: list[str] = []
    for name in [n.strip() for item in (names or [ALL]) for n in item.split(",") if n.strip()]:
        if name == ALL:
            expanded: Sequence[str] = settings.section(RouterSettings).all_channels
        elif name in CHANNELS:
            expanded = [name]
        else:
            raise BadInputError(
                f"unknown channel {name!r} (known: {', '.join(CHANNELS)}, or {ALL})"
            )
        chosen += [c for c in expanded if c not in chosen]
    if not chosen:
        raise BadInputError("no channel (--channel whatsapp, --channel instagram or all)")
    return tuple(chosen)


def _recipients(settings: Settings, channels: Sequence[str], to: Sequence[str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for item in to:
        channel, sep, recipient = item.partition("=")
        channel, recipient = channel.strip(), recipient.strip()
        if not sep or not channel or not recipient:
            raise BadInputError(f"--to {item!r}: expected CHANNEL=RECIPIENT")
        if channel not in CHANNELS:
            raise BadInputError(f"--to {item!r}: unknown channel (known: {', '.join(CHANNELS)})")
        given[channel] = recipient
    recipients = {}
    for channel in channels:
        if channel in given:
            recipients[channel] = given[channel]
        elif _is_mock(settings, channel):
            recipients[channel] = DEMO_RECIPIENTS[channel]
        else:
            api = _base_url(settings, channel)
            raise BadInputError(
                f"no recipient for {channel}: --to {channel}=RECIPIENT (demo recipients are "
                f"only used when the channel's API is a local mock; it is {api})"
            )
    return recipients


def _base_url(settings: Settings, channel: str) -> str:
    return settings.whatsapp.base_url if channel == "whatsapp" else settings.instagram.base_url


def _is_mock(settings: Settings, channel: str) -> bool:
    return urlsplit(_base_url(settings, channel)).hostname in _LOOPBACK


async def write(conn: asyncpg.Connection, message: NewMessage) -> Written:
    """The `messages` row and its `message.created` outbox event, committed together (a file
    message's file checked in the same transaction)."""
    event_id = uuid.uuid4()
    async with conn.transaction():
        if message.file_id is not None:
            file = await get_file(conn, message.file_id)
            if file is None:
                raise BadInputError(f"no file {message.file_id} (table files)")
            if file.status != "COMPLETED":
                raise BadInputError(
                    f"file {message.file_id} is {file.status}, not COMPLETED: "
                    "the router would dead-letter it (file_unavailable)"
                )
        await conn.execute(
            """INSERT INTO messages (id, conversation_id, sender_id, payload, channels, status,
                                     created_at, updated_at)
               VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, 'ACCEPTED', $6, $6)""",
            message.message_id,
            message.conversation_id,
            message.sender_id,
            orjson.dumps(message.payload).decode(),
            orjson.dumps(list(message.channels)).decode(),
            message.created_at,
        )
        await conn.execute(
            """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
               VALUES ($1, 'conversation', $2, 'message.created', $3::jsonb)""",
            event_id,
            str(message.conversation_id),
            orjson.dumps(message.record_value()).decode(),
        )
    return Written(message, event_id)


def describe(written: Written) -> Mapping[str, Any]:
    """What `send --json` prints about the message written."""
    message = written.message
    return {
        "message_id": str(message.message_id),
        "conversation_id": message.conversation_id,
        "channels": list(message.channels),
        "recipients": message.recipients,
        "event_id": str(written.event_id),
        "created_at": message.created_at.isoformat(),
    }
