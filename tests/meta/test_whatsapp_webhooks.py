"""WhatsApp Cloud API webhooks read into events (meta/whatsapp_webhooks.py), without I/O.

The property tests feed the reader arbitrary JSON documents and arbitrary mutations of valid
notifications: whatever comes, it returns (problems, ignored events or events), never raises.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings

from chat4all_workers.meta.callback import callback_ids
from chat4all_workers.meta.events import StatusError as ProviderError
from chat4all_workers.meta.events import parse_body
from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from chat4all_workers.meta.whatsapp_webhooks import parse_whatsapp
from tests.e2e.hostile import UNIT_EXAMPLES
from tests.roles.webhook_support import (
    PHONE_NUMBER_ID,
    arbitrary_documents,
    mutated_notifications,
)

PHONE = PHONE_NUMBER_ID
MESSAGE_ID = str(uuid.UUID(int=7))
CALLBACK = orjson.dumps({"message_id": MESSAGE_ID, "conversation_id": 42}).decode()
AT_S = 1_764_000_000
# How many documents each property test tries (cheap: no I/O): the unit tests' count (100;
# HOSTILE_EXAMPLES=200 makes it 2,000).
PROPERTY_EXAMPLES = UNIT_EXAMPLES


def test_parse_whatsapp_reads_a_batch_of_statuses() -> None:
    failure = ProviderError(131026, "Message undeliverable", "recipient cannot receive")
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        statuses=[
            whatsapp_status(
                "wamid.1", "delivered", at_s=AT_S, recipient_id="55", callback_data=CALLBACK
            ),
            whatsapp_status(
                "wamid.1",
                "failed",
                at_s=AT_S + 1,
                recipient_id="55",
                callback_data=CALLBACK,
                error=failure,
            ),
        ],
    )

    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)

    assert (parsed.problems, parsed.ignored) == ([], [])
    assert [
        (s.status, s.provider_message_id, s.message_id, s.conversation_id) for s in parsed.statuses
    ] == [
        ("DELIVERED", "wamid.1", MESSAGE_ID, 42),
        ("FAILED", "wamid.1", MESSAGE_ID, 42),
    ]
    assert parsed.statuses[0].at == datetime.fromtimestamp(AT_S, UTC)
    assert parsed.statuses[1].error == failure


def test_parse_whatsapp_ignores_what_is_not_ours_with_a_reason() -> None:
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        statuses=[
            whatsapp_status("wamid.1", "sent", at_s=AT_S, recipient_id="55"),
            whatsapp_status(
                "wamid.2", "sent", at_s=AT_S, recipient_id="55", callback_data="order-9"
            ),
            whatsapp_status(
                "wamid.3", "deleted", at_s=AT_S, recipient_id="55", callback_data=CALLBACK
            ),
        ],
    )
    foreign = whatsapp_notification(
        phone_number_id="9999",
        statuses=[
            whatsapp_status("wamid.4", "sent", at_s=AT_S, recipient_id="55", callback_data=CALLBACK)
        ],
    )

    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)
    parsed_foreign = parse_whatsapp(foreign, ours=PHONE.__eq__)

    assert (parsed.statuses, parsed.problems) == ([], [])
    assert parsed.ignored == [
        ("status", "no_callback_data"),
        ("status", "bad_callback_data"),
        ("status", "unknown_status"),
    ]
    assert parsed_foreign.ignored == [("status", "foreign_account")]


def test_parse_whatsapp_names_format_violations() -> None:
    bad_status = whatsapp_notification(
        phone_number_id=PHONE, statuses=[{"status": "sent", "timestamp": "1"}]
    )
    assert parse_whatsapp({"object": "page", "entry": []}, ours=PHONE.__eq__).problems == [
        "object is 'page', not 'whatsapp_business_account'"
    ]
    assert parse_whatsapp({"object": "whatsapp_business_account"}, ours=PHONE.__eq__).problems == [
        "entry is not a list"
    ]
    assert parse_whatsapp(bad_status, ours=PHONE.__eq__).problems == [
        "entry[0].changes[0].value.statuses[0].id is missing or not an id"
    ]


def test_parse_whatsapp_reads_inbound_messages_with_the_senders_name() -> None:
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        contacts=[{"profile": {"name": "Ana"}, "wa_id": "5511999990000"}],
        messages=[
            {
                "from": "5511999990000",
                "id": "wamid.in1",
                "timestamp": str(AT_S),
                "type": "text",
                "text": {"body": "oi\x00"},
                "context": {"id": "wamid.ours"},
            },
            {
                "from": "5511999990000",
                "id": "wamid.in2",
                "timestamp": str(AT_S),
                "type": "image",
                "image": {
                    "id": "media-1",
                    "mime_type": "image/jpeg",
                    "sha256": "abc",
                    "caption": "look",
                },
            },
            {
                "from": "5511999990000",
                "id": "wamid.in3",
                "timestamp": str(AT_S),
                "type": "location",
                "location": {"latitude": -23.5, "longitude": -46.6},
            },
        ],
    )

    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)

    text, image, location = parsed.inbound
    assert (text.sender, text.sender_name, text.text, text.reply_to) == (
        "5511999990000",
        "Ana",
        "oi\ufffd",
        "wamid.ours",
    )
    assert (image.type, image.text, image.attachments[0]["id"]) == ("image", "look", "media-1")
    assert (location.type, location.content) == (
        "location",
        {"latitude": -23.5, "longitude": -46.6},
    )


def test_parse_whatsapp_refuses_content_nested_too_deep_without_recursing() -> None:
    # 900 levels: within orjson's parsing limit, beyond its writing limit and Python's stack.
    deep = b'{"x":' * 900 + b"{}" + b"}" * 900
    message = b'{"from":"55","id":"wamid.d","timestamp":"1","type":"location","location":%s}' % deep
    body = orjson.dumps(whatsapp_notification(phone_number_id=PHONE, messages=[{}])).replace(
        b"{}]", message + b"]"
    )
    doc, problem = parse_body(body)

    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)

    assert (problem, parsed.inbound) == (None, [])
    assert parsed.problems == [
        "entry[0].changes[0].value.messages[0].location is nested deeper than 32 levels"
    ]


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(doc=arbitrary_documents())
def test_parse_whatsapp_never_raises_on_arbitrary_documents(doc: Any) -> None:
    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)

    assert all(s.status in ("SENT", "DELIVERED", "READ", "FAILED") for s in parsed.statuses)
    assert all(isinstance(p, str) and p for p in parsed.problems)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(whatsapp=mutated_notifications("whatsapp"))
def test_parse_whatsapp_never_raises_on_mutated_notifications(whatsapp: Any) -> None:
    parsed = parse_whatsapp(whatsapp, ours=PHONE.__eq__)

    for status in parsed.statuses:
        # What survived is storable: its record serialises, with ids of the right shape.
        assert orjson.dumps([status.provider_message_id, status.at.isoformat()])
        assert callback_ids(
            orjson.dumps(
                {"message_id": status.message_id, "conversation_id": status.conversation_id}
            ).decode()
        )
    for message in parsed.inbound:
        assert orjson.dumps([message.text, message.content, list(message.attachments)])
