"""WhatsApp Cloud API webhooks read into events (meta/whatsapp_webhooks.py), without I/O.

The property tests feed the reader arbitrary JSON documents and arbitrary mutations of valid
notifications: whatever comes, it returns (problems, ignored events or events), never raises.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat4all_workers.meta.callback import callback_ids
from chat4all_workers.meta.events import StatusError as ProviderError
from chat4all_workers.meta.events import parse_body
from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from chat4all_workers.meta.whatsapp_webhooks import _read_fully, _usual, parse_whatsapp
from tests.e2e.hostile import UNIT_EXAMPLES
from tests.roles.webhook_support import (
    JSON_VALUES,
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


# -- the usual notification's one-pass reading (`_usual`) against the full one --------------------


def statuses_notification(*statuses: dict[str, Any]) -> dict[str, Any]:
    """Statuses of our sends to our number, and nothing else: the notification Meta sends most."""
    return whatsapp_notification(phone_number_id=PHONE, statuses=list(statuses))


def delivered(n: int = 1, **more: Any) -> dict[str, Any]:
    item = whatsapp_status(
        f"wamid.{n}",
        "delivered",
        at_s=AT_S + n,
        recipient_id="5511999990000",
        callback_data=CALLBACK,
    )
    item.update(more)
    return item


def failed(n: int = 2) -> dict[str, Any]:
    failure = ProviderError(131026, "Message undeliverable", "recipient cannot receive")
    return whatsapp_status(
        f"wamid.{n}", "failed", at_s=AT_S, recipient_id="55", callback_data=CALLBACK, error=failure
    )


USUAL = statuses_notification(delivered(1), failed(2), delivered(3, status="read"))


def node_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path (keys and indices) of every node of `doc`, itself included."""
    found = [path]
    if isinstance(doc, dict):
        items: Any = doc.items()
    elif isinstance(doc, list):
        items = enumerate(doc)
    else:
        items = ()
    for key, child in items:
        found += node_paths(child, (*path, key))
    return found


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`doc` with the node at `path` replaced by `value`, or added when a dict has no such key
    (copied along the way)."""
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = value if len(path) == 1 else replaced(doc[path[0]], path[1:], value)
    return copy


PATHS = node_paths(USUAL)
# What a node of the usual notification may become: each type, the edges of an id and of a
# timestamp, the names of statuses, and the shapes of what the one-pass reading declines.
REPLACEMENTS: list[Any] = [
    None, True, 0, 1.5, "", "x", "x" * 513, "a\x00b", "-1", "1764000000", "1" * 13, "sent",
    "failed", "deleted", "messages", [], [{}], {}, {"id": "1"}, CALLBACK,
    [delivered(9)], {"phone_number_id": "another"}, {"messages": [], "statuses": []},
]  # fmt: skip


def test_the_one_pass_reading_reads_what_the_full_one_does_at_every_node() -> None:
    parted = []
    taken = 0
    for path in PATHS:
        for value in REPLACEMENTS:
            doc = replaced(USUAL, path, value)
            usual = _usual(doc, PHONE.__eq__)
            if usual is not None:
                taken += 1
                if usual != _read_fully(doc, PHONE.__eq__):
                    parted.append((path, value))

    assert parted == []
    assert taken > 100  # it did read many of them: the comparison saw both readings


@settings(max_examples=PROPERTY_EXAMPLES * 5, deadline=None)
@given(where=st.sampled_from(PATHS), value=JSON_VALUES)
def test_the_one_pass_reading_reads_what_the_full_one_does(
    where: tuple[Any, ...], value: Any
) -> None:
    doc = replaced(USUAL, where, value)

    usual = _usual(doc, PHONE.__eq__)

    if usual is not None:  # it takes a notification only as the full reading reads it
        assert usual == _read_fully(doc, PHONE.__eq__)


@pytest.mark.parametrize(
    "doc",
    [
        statuses_notification(delivered()),
        USUAL,
        statuses_notification(delivered(conversation={"id": "c"}, pricing={"billable": True})),
        statuses_notification(delivered(recipient_id=None), delivered(2, recipient_id="")),
        statuses_notification(
            delivered(
                biz_opaque_callback_data=orjson.dumps(
                    {"message_id": MESSAGE_ID.upper(), "conversation_id": 42, "origin": "t:1:2"}
                ).decode()
            )
        ),
    ],
)
def test_the_usual_notification_is_read_in_one_pass(doc: dict[str, Any]) -> None:
    usual = _usual(doc, PHONE.__eq__)

    assert usual is not None
    assert usual == _read_fully(doc, PHONE.__eq__)
    assert usual.statuses
    assert (usual.problems, usual.ignored) == ([], [])
    assert parse_whatsapp(doc, ours=PHONE.__eq__) == usual


@pytest.mark.parametrize(
    ("doc", "ours"),
    [
        (USUAL, "another".__eq__),  # another number's: ignored as foreign_account
        (statuses_notification(delivered(biz_opaque_callback_data=None)), PHONE.__eq__),
        (statuses_notification(delivered(status="deleted")), PHONE.__eq__),
        (statuses_notification(), PHONE.__eq__),
        ({**USUAL, "entry": USUAL["entry"] * 2}, PHONE.__eq__),
        (
            replaced(USUAL, ("entry", 0, "changes", 0, "value", "errors"), [{"code": 1}]),
            PHONE.__eq__,
        ),
        (replaced(USUAL, ("entry", 0, "changes", 0, "value", "messages"), []), PHONE.__eq__),
    ],
)
def test_any_other_notification_is_read_fully(doc: dict[str, Any], ours: Any) -> None:
    assert _usual(doc, ours) is None
    assert parse_whatsapp(doc, ours=ours) == _read_fully(doc, ours)
