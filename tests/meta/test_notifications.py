"""The writers of Meta's webhook payloads (meta/notifications.py): what they write is what Meta
sends, so the channel's parser reads it back as the event it stands for."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from chat4all_workers.meta.callback import callback_data
from chat4all_workers.meta.events import StatusError
from chat4all_workers.meta.instagram_webhooks import parse_instagram
from chat4all_workers.meta.notifications import (
    ERROR_CODES_HREF,
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
from chat4all_workers.meta.whatsapp_webhooks import parse_whatsapp

PHONE = "1000"
IG = "2000"
MESSAGE_ID = str(uuid.UUID(int=7))
CALLBACK = callback_data(MESSAGE_ID, 42)
AT_S = 1_764_000_000


def test_whatsapp_status_is_one_statuses_item_in_whatsapps_words() -> None:
    item = whatsapp_status("wamid.1", "delivered", at_s=AT_S, recipient_id="55")

    assert item == {
        "id": "wamid.1",
        "status": "delivered",
        "timestamp": str(AT_S),  # WhatsApp sends Unix seconds as a string
        "recipient_id": "55",
    }


def test_whatsapp_notification_of_a_status_parses_back_to_the_status() -> None:
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        statuses=[
            whatsapp_status("wamid.1", "read", at_s=AT_S, recipient_id="55", callback_data=CALLBACK)
        ],
    )

    parsed = parse_whatsapp(doc, ours=PHONE.__eq__)

    (status,) = parsed.statuses
    assert (parsed.problems, parsed.ignored) == ([], [])
    assert (status.provider_message_id, status.status) == ("wamid.1", "READ")
    assert (status.message_id, status.conversation_id) == (MESSAGE_ID, 42)
    assert status.at == datetime.fromtimestamp(AT_S, UTC)


def test_whatsapp_status_with_an_error_parses_back_to_a_failure_with_it() -> None:
    error = StatusError(131026, "Message undeliverable", "the recipient cannot receive it")
    failed = whatsapp_status(
        "wamid.1", "failed", at_s=AT_S, recipient_id="55", callback_data=CALLBACK, error=error
    )
    doc = whatsapp_notification(phone_number_id=PHONE, statuses=[failed])

    (status,) = parse_whatsapp(doc, ours=PHONE.__eq__).statuses

    assert (status.status, status.error) == ("FAILED", error)
    assert failed["errors"][0]["href"] == ERROR_CODES_HREF  # Meta links its error codes page


def test_whatsapp_notification_of_a_message_parses_back_with_the_contacts_name() -> None:
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        contacts=[{"profile": {"name": "Ana"}, "wa_id": "5511999990000"}],
        messages=[
            {
                "from": "5511999990000",
                "id": "wamid.in1",
                "timestamp": str(AT_S),
                "type": "text",
                "text": {"body": "oi"},
            }
        ],
    )

    (inbound,) = parse_whatsapp(doc, ours=PHONE.__eq__).inbound

    assert (inbound.channel, inbound.provider_message_id, inbound.account_id) == (
        "whatsapp",
        "wamid.in1",
        PHONE,
    )
    assert (inbound.sender, inbound.sender_name, inbound.text) == ("5511999990000", "Ana", "oi")


def test_instagram_read_parses_back_to_a_read_receipt() -> None:
    doc = instagram_notification(
        account_id=IG,
        events=[instagram_read("mid.1", customer="igsid", account_id=IG, at_ms=AT_S * 1000 + 5)],
    )

    (status,) = parse_instagram(doc, ours=IG.__eq__).statuses

    assert (status.kind, status.provider_message_id, status.status) == ("read", "mid.1", "READ")
    assert status.message_id is None  # a receipt names the provider's id only
    assert status.at == datetime.fromtimestamp(AT_S + 0.005, UTC)


def test_instagram_echo_with_our_metadata_parses_back_to_sent() -> None:
    echo = instagram_echo(
        "mid.2", customer="igsid", account_id=IG, at_ms=AT_S * 1000, metadata=CALLBACK, text="oi"
    )
    doc = instagram_notification(account_id=IG, events=[echo])

    (status,) = parse_instagram(doc, ours=IG.__eq__).statuses

    assert (status.kind, status.provider_message_id, status.status) == ("echo", "mid.2", "SENT")
    assert (status.message_id, status.conversation_id) == (MESSAGE_ID, 42)


def test_instagram_echo_without_metadata_is_a_message_sent_from_the_app() -> None:
    doc = instagram_notification(
        account_id=IG,
        events=[
            instagram_echo("mid.3", customer="igsid", account_id=IG, at_ms=AT_S, metadata=None)
        ],
    )

    parsed = parse_instagram(doc, ours=IG.__eq__)

    assert parsed.statuses == []
    assert parsed.ignored == [("echo", "no_callback_data")]


def test_whatsapp_message_writer_parses_back_to_the_users_message() -> None:
    doc = whatsapp_notification(
        phone_number_id=PHONE,
        contacts=[whatsapp_contact("5511999990000", name="Ana")],
        messages=[
            whatsapp_message(
                "wamid.in2", sender="5511999990000", at_s=AT_S, kind="text", content={"body": "oi"}
            )
        ],
    )

    (inbound,) = parse_whatsapp(doc, ours=PHONE.__eq__).inbound

    assert (inbound.provider_message_id, inbound.sender, inbound.sender_name) == (
        "wamid.in2",
        "5511999990000",
        "Ana",
    )
    assert (inbound.type, inbound.text, inbound.at) == (
        "text",
        "oi",
        datetime.fromtimestamp(AT_S, UTC),
    )


def test_instagram_message_writer_parses_back_to_the_users_message() -> None:
    event = instagram_message(
        "mid.in1", customer="igsid", account_id=IG, at_ms=AT_S * 1000, text="oi"
    )
    doc = instagram_notification(account_id=IG, events=[event])

    (inbound,) = parse_instagram(doc, ours=IG.__eq__).inbound

    assert (inbound.provider_message_id, inbound.sender, inbound.text) == ("mid.in1", "igsid", "oi")
    assert inbound.account_id == IG


def test_instagram_reaction_is_an_event_the_parser_leaves_alone() -> None:
    reaction = instagram_reaction(
        "mid.1", customer="igsid", account_id=IG, at_ms=AT_S * 1000, emoji="❤"
    )
    doc = instagram_notification(account_id=IG, events=[reaction])

    parsed = parse_instagram(doc, ours=IG.__eq__)

    assert reaction["reaction"] == {
        "mid": "mid.1",
        "action": "react",
        "reaction": "love",
        "emoji": "❤",
    }
    assert (parsed.inbound, parsed.problems, parsed.ignored) == (
        [],
        [],
        [("other", "unsupported_event")],
    )
