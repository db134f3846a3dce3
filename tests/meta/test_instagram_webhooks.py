"""Instagram Messaging webhooks read into events (meta/instagram_webhooks.py), without I/O.

The property tests feed the reader arbitrary JSON documents and arbitrary mutations of valid
notifications: whatever comes, it returns (problems, ignored events or events), never raises.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given, settings

from chat4all_workers.meta.callback import callback_ids
from chat4all_workers.meta.instagram_webhooks import parse_instagram
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_notification,
    instagram_read,
)
from tests.e2e.hostile import UNIT_EXAMPLES
from tests.roles.webhook_support import IG_USER_ID, arbitrary_documents, mutated_notifications

IG = IG_USER_ID
MESSAGE_ID = str(uuid.UUID(int=7))
CALLBACK = orjson.dumps({"message_id": MESSAGE_ID, "conversation_id": 42}).decode()
AT_S = 1_764_000_000
# How many documents each property test tries (cheap: no I/O): the unit tests' count (100;
# HOSTILE_EXAMPLES=200 makes it 2,000).
PROPERTY_EXAMPLES = UNIT_EXAMPLES


def test_parse_instagram_reads_receipts_echoes_and_messages() -> None:
    doc = instagram_notification(
        account_id=IG,
        events=[
            instagram_read("mid.1", customer="igsid", account_id=IG, at_ms=AT_S * 1000),
            instagram_echo(
                "mid.2", customer="igsid", account_id=IG, at_ms=AT_S * 1000, metadata=CALLBACK
            ),
            instagram_echo(
                "mid.3", customer="igsid", account_id=IG, at_ms=AT_S * 1000, metadata=None
            ),
            {
                "sender": {"id": "igsid"},
                "recipient": {"id": IG},
                "timestamp": AT_S * 1000,
                "message": {
                    "mid": "mid.4",
                    "text": "hello",
                    "attachments": [{"type": "image", "payload": {"url": "https://x/y.jpg"}}],
                },
            },
            {
                "sender": {"id": "igsid"},
                "recipient": {"id": IG},
                "timestamp": AT_S * 1000,
                "reaction": {"mid": "mid.2", "action": "react", "emoji": "x"},
            },
        ],
    )

    parsed = parse_instagram(doc, ours=IG.__eq__)

    assert parsed.problems == []
    assert [(s.kind, s.provider_message_id, s.status, s.message_id) for s in parsed.statuses] == [
        ("read", "mid.1", "READ", None),
        ("echo", "mid.2", "SENT", MESSAGE_ID),
    ]
    (inbound,) = parsed.inbound
    assert (inbound.sender, inbound.text, inbound.attachments[0]["url"]) == (
        "igsid",
        "hello",
        "https://x/y.jpg",
    )
    assert parsed.ignored == [("echo", "no_callback_data"), ("other", "unsupported_event")]


def test_parse_instagram_ignores_another_account() -> None:
    doc = instagram_notification(
        account_id="3000",
        events=[instagram_read("mid.1", customer="c", account_id="3000", at_ms=AT_S * 1000)],
    )
    assert parse_instagram(doc, ours=IG.__eq__).ignored == [("event", "foreign_account")]


def test_parse_instagram_names_format_violations() -> None:
    no_sender = instagram_notification(
        account_id=IG, events=[{"recipient": {"id": IG}, "timestamp": AT_S * 1000, "read": {}}]
    )

    assert parse_instagram({"object": "page", "entry": []}, ours=IG.__eq__).problems == [
        "object is 'page', not 'instagram'"
    ]
    assert parse_instagram(no_sender, ours=IG.__eq__).problems == [
        "entry[0].messaging[0] lacks a valid sender.id, recipient.id or timestamp"
    ]


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(doc=arbitrary_documents())
def test_parse_instagram_never_raises_on_arbitrary_documents(doc: Any) -> None:
    parsed = parse_instagram(doc, ours=IG.__eq__)

    assert all(s.status in ("SENT", "READ") for s in parsed.statuses)
    assert all(isinstance(p, str) and p for p in parsed.problems)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(instagram=mutated_notifications("instagram"))
def test_parse_instagram_never_raises_on_mutated_notifications(instagram: Any) -> None:
    parsed = parse_instagram(instagram, ours=IG.__eq__)

    for status in parsed.statuses:
        # What survived is storable: its record serialises, with ids of the right shape.
        assert orjson.dumps([status.provider_message_id, status.at.isoformat()])
        assert status.kind == "read" or callback_ids(
            orjson.dumps(
                {"message_id": status.message_id, "conversation_id": status.conversation_id}
            ).decode()
        )
    for message in parsed.inbound:
        assert orjson.dumps([message.text, message.content, list(message.attachments)])
