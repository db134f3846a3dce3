"""The `message_processing` wire format (contract section 3), as the router reads it.

Every field is checked, not only those the router uses, so a record that breaks the contract
is dead-lettered with the reason instead of being sent half-understood:

- `message_id` (UUID, required), `conversation_id` (integer in PostgreSQL's bigint range,
  required), `sender_id` (bigint, or absent/null for a message without a sender);
- `sender_username`: a string of at most 255 characters, or absent/null (the API may not know
  it, and nothing here depends on it);
- `payload`: `{"type": "text", "content": non-empty string}`, `{"type": "file", "file_id":
  UUID, "content": optional caption string}`, or `{"type": "template", "template": {"name":
  string, "language": {"code": string, ...}, "components": [objects]}}` (Meta's template object,
  sent as it is: WhatsApp only); any of them may say `"human_agent": true` (a person wrote it:
  Instagram may send it with Meta's HUMAN_AGENT tag up to 7 days after the user's last message);
- `channels`: a non-empty array of known channel names (or `"all"` in it), or `"all"`;
- `recipients`: optional; an object whose values are strings of at most 256 characters, or
  null (a chosen channel without one fails for that channel only, as `invalid_record`, with
  nothing sent to it);
- `created_at`: an RFC 3339 date-time with offset, or absent/null (nothing here depends on it,
  and a message is not refused for lacking what no step uses; when present it must be right);
- `account`: optional; the sending account's key (accounts/model.py), one string for every
  channel, or an object of channel -> key; absent or null: the channel's `default` account. A
  key no account has is not a format error: that channel FAILS `unknown_account`.

Fields the format does not name are ignored, so the API can add some first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from datetime import datetime
from typing import Any

import orjson

from chat4all_workers.config import CHANNELS
from chat4all_workers.formats.wire import (
    BIGINT,
    Fields,
    describe,
    present,
    quote,
    read_record,
    rfc3339,
    uuid_text,
)
from chat4all_workers.frozen import frozen

MAX_USERNAME_CHARS = 255
MAX_RECIPIENT_CHARS = 256
MAX_ACCOUNT_CHARS = 64
ALL = "all"


MAX_TEMPLATE_NAME_CHARS = 512  # Meta: template names up to 512 characters
MAX_TEMPLATE_BYTES = 64 * 1024


@frozen
class Message:
    message_id: str
    conversation_id: int
    sender_id: int | None
    sender_username: str | None
    kind: str  # "text" | "file" | "template"
    content: str
    file_id: str | None
    channels: tuple[str, ...]
    recipients: dict[str, str]
    created_at: datetime | None
    template: dict[str, Any] | None = None  # Meta's template object, for "template"
    human_agent: bool = False  # a person wrote it (Instagram's HUMAN_AGENT tag)
    accounts: dict[str, str] = field(default_factory=dict)  # channel -> account key, if named

    def account(self, channel: str) -> str | None:
        """The key of the account that sends on `channel`; None: the channel's default."""
        return self.accounts.get(channel)


def parse_message(value: bytes | None, all_channels: tuple[str, ...]) -> Message:
    """The message a record carries, or InvalidRecordError naming every field that is wrong."""
    fields = read_record(value)
    if not fields.problems:
        usual = _usual(fields.doc, all_channels)
        if usual is not None:
            return usual
    return _read_fully(fields, all_channels)


_LOW, _HIGH = BIGINT


def _usual(doc: Mapping[str, Any], all_channels: tuple[str, ...]) -> Message | None:
    """The message of a record of the usual shape, read in one pass: a text, for channels
    named (or `all`), from the channel's default account, each field of its plain type and
    within the limits above. None for any other record, which `_read_fully` then reads field
    by field, or refuses naming each problem.

    The router reads every record, and reading the usual one field by field cost 10 us (9 % of
    the router's CPU, sampled in its benchmark); read here, 5. The rules are `_read_fully`'s:
    tests/formats/test_message.py holds the two readings equal on every record it makes, at
    the edges of each limit."""
    get = doc.get
    message_id, conversation_id = get("message_id"), get("conversation_id")
    sender_id, username = get("sender_id"), get("sender_username")
    payload, channels, recipients = get("payload"), get("channels"), get("recipients")
    if not (
        type(message_id) is str
        and type(conversation_id) is int
        and _LOW <= conversation_id <= _HIGH
        and (sender_id is None or (type(sender_id) is int and _LOW <= sender_id <= _HIGH))
        and (username is None or (type(username) is str and len(username) <= MAX_USERNAME_CHARS))
        and type(payload) is dict
        and payload.get("type") == "text"
        and get("account") is None
    ):
        return None
    message_id = uuid_text(message_id)
    content, human_agent = payload.get("content"), payload.get("human_agent")
    if message_id is None or type(content) is not str or not content:
        return None
    if human_agent is not None and type(human_agent) is not bool:
        return None
    chosen, recipients = _usual_channels(channels, all_channels), _usual_recipients(recipients)
    if chosen is None or recipients is None:
        return None
    stamp, created_at = get("created_at"), None
    if stamp is not None:
        moment = rfc3339(stamp) if type(stamp) is str else None  # str: what is wrong with it
        if not isinstance(moment, datetime):
            return None
        created_at = moment
    # By position (half the cost of naming the fields); the tests hold each in its place.
    return Message(
        message_id,
        conversation_id,
        sender_id,
        username,
        "text",
        content,
        None,  # file_id
        chosen,
        recipients,
        created_at,
        None,  # template
        human_agent is True,
    )


def _usual_channels(value: Any, all_channels: tuple[str, ...]) -> tuple[str, ...] | None:
    """`channels` of the usual record: `all`, or a list of known names (duplicates once each,
    in order); None for anything else."""
    if type(value) is not list or not value:
        return all_channels if value == ALL else None
    if len(value) == 1:  # the common case
        return (value[0],) if _named(value[0]) else None
    for channel in value:
        if not _named(channel):
            return None
    return tuple(dict.fromkeys(value))


def _usual_recipients(value: Any) -> dict[str, str] | None:
    """`recipients` of the usual record, copied: absent, or strings within their limit; None
    for anything else (a null one, a number: read by `_read_fully`)."""
    if value is None:
        return {}
    if type(value) is not dict:
        return None
    for recipient in value.values():
        if type(recipient) is not str or len(recipient) > MAX_RECIPIENT_CHARS:
            return None
    return dict(value)


def _named(channel: object) -> bool:
    """A known channel's name, as a record's list holds it (`all` in a list, or anything else,
    is read by `_read_fully`)."""
    return type(channel) is str and channel in CHANNELS


def _read_fully(fields: Fields, all_channels: tuple[str, ...]) -> Message:
    """The message of any record, each field read with its rules, or InvalidRecordError naming
    every field that is wrong."""
    message_id = fields.uuid("message_id")
    conversation_id = fields.integer("conversation_id")
    sender_id = fields.integer("sender_id", required=False)
    sender_username = fields.text(
        "sender_username", required=False, max_chars=MAX_USERNAME_CHARS, allow_empty=True
    )
    payload = _payload(fields)
    channels = _channels(fields, all_channels)
    recipients = _recipients(fields)
    created_at = fields.timestamp("created_at", required=False)
    accounts = _accounts(fields)
    fields.done()
    kind, content, file_id, template, human_agent = present(payload)
    return Message(
        message_id=present(message_id),
        conversation_id=present(conversation_id),
        sender_id=sender_id,
        sender_username=sender_username,
        kind=kind,
        content=content,
        file_id=file_id,
        channels=channels,
        recipients=recipients,
        created_at=created_at,
        template=template,
        human_agent=human_agent,
        accounts=accounts,
    )


_Payload = tuple[str, str, str | None, dict[str, Any] | None, bool]


def _payload(fields: Fields) -> _Payload | None:
    payload = fields.object("payload")
    if payload is None:
        return None
    kind = payload.choice("type", ("text", "file", "template"))
    human_agent = payload.get("human_agent", required=False)
    if human_agent is not None and not isinstance(human_agent, bool):
        payload.problem("human_agent", f"must be true or false, got {describe(human_agent)}")
    human = human_agent is True
    if kind == "text":
        content = payload.text("content")
        return None if content is None else ("text", content, None, None, human)
    if kind == "file":
        file_id = payload.uuid("file_id")
        caption = payload.text("content", required=False, allow_empty=True)
        return None if file_id is None else ("file", caption or "", file_id, None, human)
    if kind == "template":
        template = _template(payload)
        return None if template is None else ("template", "", None, template, human)
    return None


def _template(payload: Fields) -> dict[str, Any] | None:
    """Meta's template object: `name`, `language.code`, optional `components` (objects); the
    rest of it (parameters, sub_type, index, policy) is Meta's to judge, passed on as it is."""
    template = payload.object("template")
    if template is None:
        return None
    template.text("name", max_chars=MAX_TEMPLATE_NAME_CHARS)
    language = template.object("language")
    if language is not None:
        language.text("code", max_chars=32)
    components = template.get("components", required=False)
    if components is not None and not (
        isinstance(components, list) and all(isinstance(c, dict) for c in components)
    ):
        template.problem("components", f"must be an array of objects, got {describe(components)}")
    if len(orjson.dumps(template.doc)) > MAX_TEMPLATE_BYTES:
        payload.problem("template", f"larger than {MAX_TEMPLATE_BYTES} bytes")
    return dict(template.doc)


def _channels(fields: Fields, all_channels: tuple[str, ...]) -> tuple[str, ...]:
    value = fields.get("channels", required=True)
    if value is None or value == ALL:
        return all_channels if value == ALL else ()
    if not isinstance(value, list) or not value:
        got = "an empty array" if value == [] else describe(value)
        fields.problem("channels", f'must be a non-empty array of channels or "all", got {got}')
        return ()
    chosen: list[str] = []
    for n, channel in enumerate(value):
        where = f"channels[{n}]"
        if not isinstance(channel, str):
            fields.problem_at(where, f"must be a channel name, got {describe(channel)}")
            continue
        for name in all_channels if channel == ALL else (channel,):
            if name not in CHANNELS:
                known = ", ".join(CHANNELS)
                fields.problem_at(where, f"unknown channel {quote(name)}; known: {known}")
            elif name not in chosen:
                chosen.append(name)
    return tuple(chosen)


def _recipients(fields: Fields) -> dict[str, str]:
    recipients = fields.object("recipients", required=False)
    if recipients is None:
        return {}
    chosen: dict[str, str] = {}
    for name in recipients.doc:
        recipient = recipients.text(
            name, required=False, max_chars=MAX_RECIPIENT_CHARS, allow_empty=True
        )
        if recipient is not None:
            chosen[name] = recipient
    return chosen


def _accounts(fields: Fields) -> dict[str, str]:
    """`account`: one key for every channel, or channel -> key."""
    value = fields.get("account", required=False)
    if value is None:
        return {}
    if isinstance(value, str):
        key = fields.text("account", max_chars=MAX_ACCOUNT_CHARS)
        return {} if key is None else dict.fromkeys(CHANNELS, key)
    if not isinstance(value, dict):
        got = describe(value)
        fields.problem(
            "account", f"must be an account key or an object of channel -> key, got {got}"
        )
        return {}
    per_channel = fields.object("account")
    if per_channel is None:
        return {}
    chosen: dict[str, str] = {}
    for name in per_channel.doc:
        if name not in CHANNELS:
            per_channel.problem(name, f"unknown channel; known: {', '.join(CHANNELS)}")
            continue
        key = per_channel.text(name, required=False, max_chars=MAX_ACCOUNT_CHARS)
        if key is not None:
            chosen[name] = key
    return chosen
