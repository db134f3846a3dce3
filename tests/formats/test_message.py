"""The `message_processing` format as the router reads it: every field checked, every problem
named by its field, nothing but InvalidRecordError for anything a producer can write."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat4all_workers.errors import InvalidRecordError
from chat4all_workers.formats.message import Message, _read_fully, _usual, parse_message
from chat4all_workers.formats.wire import read_record
from tests.e2e.hostile import (
    MESSAGE_HOSTILE_FIELDS,
    MESSAGE_REQUIRED,
    MESSAGE_WRONG,
    UNIT_EXAMPLES,
    Broken,
    broken_document,
    encode,
    junk_bytes,
    message_doc,
    not_rfc3339,
)

CHANNELS = ("whatsapp", "instagram")


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidRecordError) as error:
        parse_message(value, CHANNELS)
    return str(error.value)


def test_parse_message_reads_every_field() -> None:
    doc = message_doc(message_id="3F2504E0-4F89-11D3-9A0C-0305E82C3301", channels="all")

    message = parse_message(orjson.dumps(doc), CHANNELS)

    assert message.message_id == "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
    assert (message.conversation_id, message.sender_id) == (42, 7)
    assert message.sender_username == "ana"
    assert (message.kind, message.content, message.file_id) == ("text", "hello", None)
    assert message.channels == CHANNELS
    assert message.recipients == doc["recipients"]
    assert message.created_at is not None
    assert message.created_at.isoformat() == "2026-11-28T10:30:00+00:00"


@pytest.mark.parametrize("absent", ["sender_id", "sender_username", "recipients", "created_at"])
def test_parse_message_takes_an_optional_field_absent_or_null(absent: str) -> None:
    without = message_doc()
    del without[absent]

    for doc in (without, message_doc(**{absent: None})):
        message = parse_message(orjson.dumps(doc), CHANNELS)
        assert message.message_id == doc["message_id"]


# Each case named by its reason: the values hold a random message id, and a test's id must be the
# same in every pytest-xdist worker's collection.
_WRONG: list[tuple[bytes | None, str]] = [
    (None, "tombstone: the record has no value"),
    (b"", "empty value: not JSON"),
    (b"\xde\xad\xbe\xef", "not UTF-8: byte 0xbe at offset 2"),
    (b"[1]", "not a JSON object but an array"),
    (b"{" * 5000, "not JSON: unexpected character"),
    (b"[" * 1100 + b"]" * 1100, "nested more than 1024 levels deep"),
    (
        orjson.dumps(message_doc(conversation_id=2**63)),
        "conversation_id: 9223372036854775808 is",
    ),
    (encode(message_doc(sender_id=-(2**63) - 1), "ascii"), "sender_id: about -9.22e+18 is"),
    (orjson.dumps(message_doc(conversation_id=4.2)), "conversation_id: must be an integer"),
    (orjson.dumps(message_doc(sender_username=["ana"])), "sender_username: must be a string"),
    (orjson.dumps(message_doc(created_at=1700000000)), "created_at: must be an RFC 3339"),
    (orjson.dumps(message_doc(created_at="2026-11-28")), "created_at: not an RFC 3339"),
    (orjson.dumps(message_doc(created_at="2026-02-30T00:00:00Z")), "created_at: not a valid"),
    (orjson.dumps(message_doc(message_id="{x}")), 'message_id: not a UUID: "{x}"'),
    (orjson.dumps(message_doc(channels=["sms"])), 'channels[0]: unknown channel "sms"'),
    (orjson.dumps(message_doc(recipients={"whatsapp": 5})), "recipients.whatsapp: must be"),
    (encode(message_doc(payload={"type": "text", "content": "\ud800"}), "ascii"), "payload.co"),
    (encode(message_doc(note="\udfff"), "utf8"), "note: holds a lone surrogate"),
    (b'{"a": 1e400}', "a: a number too large for a double"),
]


@pytest.mark.parametrize(("value", "reason"), _WRONG, ids=[reason for _, reason in _WRONG])
def test_parse_message_says_what_is_wrong(value: bytes | None, reason: str) -> None:
    assert reason in reason_of(value)


def test_parse_message_names_every_bad_field_at_once() -> None:
    doc = message_doc(conversation_id="42", created_at="yesterday")
    del doc["payload"]

    reason = reason_of(orjson.dumps(doc))

    assert reason.split("; ") == [
        "conversation_id: must be an integer, got a string",
        "payload: missing",
        'created_at: not an RFC 3339 date-time: "yesterday"',
    ]


def test_parse_message_quotes_a_huge_value_briefly() -> None:
    reason = reason_of(orjson.dumps(message_doc(created_at="x" * 1_000_000)))

    assert len(reason) < 200
    assert "(1000000 chars)" in reason


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(
    broken=broken_document(message_doc(), MESSAGE_WRONG, MESSAGE_REQUIRED, MESSAGE_HOSTILE_FIELDS)
)
def test_parse_message_rejects_a_broken_field_naming_it(broken: Broken) -> None:
    reason = reason_of(broken.value)

    assert broken.field in reason
    assert "\n" not in reason
    assert len(reason) < 1000


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(value=st.one_of(junk_bytes(), st.none()))
def test_parse_message_rejects_junk_with_a_reason(value: bytes | None) -> None:
    assert reason_of(value)


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(
    username=st.one_of(st.none(), st.text(max_size=255)),
    sender=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    conversation=st.integers(-(2**63), 2**63 - 1),
    created=st.datetimes(timezones=st.just(UTC)),
)
def test_parse_message_accepts_every_valid_value(
    username: str | None, sender: int | None, conversation: int, created: datetime
) -> None:
    doc = message_doc(
        sender_username=username,
        sender_id=sender,
        conversation_id=conversation,
        created_at=created.isoformat(),
    )

    message = parse_message(encode(doc, "utf8"), CHANNELS)

    assert (message.sender_username, message.sender_id) == (username, sender)
    assert message.created_at == created


# -- the usual record's one-pass reading (`_usual`) against the full one ---------------------------

# Each field's variations: valid ones, the edges of its limits, and wrong ones.
VARIATIONS: dict[str, st.SearchStrategy[Any]] = {
    "message_id": st.one_of(
        st.uuids().map(lambda u: str(u).upper()),
        st.sampled_from(["3f2504e0-4f89-11d3-9a0c-0305e82c330", "{3f2504e0-4f89-11d3}", 5]),
    ),
    "conversation_id": st.one_of(
        st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63, -(2**63) - 1, True, 4.0])
    ),
    "sender_id": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63, False])),
    "sender_username": st.one_of(st.text(max_size=3), st.text(min_size=254, max_size=257)),
    "payload": st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("text"), "content": st.sampled_from(["x", "", 5, None])}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("text"),
                "content": st.just("x"),
                "human_agent": st.sampled_from([True, False, None, "yes", 1, 0]),
            }
        ),
        st.just({"type": "file", "file_id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}),
        st.just({"type": "template", "template": {"name": "hi", "language": {"code": "en"}}}),
        st.just({"content": "no type"}),
    ),
    "channels": st.sampled_from(
        [
            "all",
            "whatsapp",
            ["whatsapp"],
            ["instagram", "whatsapp"],
            ["whatsapp", "whatsapp"],
            ["all"],
            ["whatsapp", "all"],
            [],
            ["sms"],
            [1],
            [[]],
            [{}],
            {"whatsapp": True},
        ]
    ),
    "recipients": st.one_of(
        st.dictionaries(
            st.sampled_from(["whatsapp", "instagram", "x"]),
            st.one_of(
                st.text(max_size=3), st.text(min_size=255, max_size=257), st.none(), st.just(5)
            ),
            max_size=3,
        ),
        st.fixed_dictionaries({"whatsapp": st.text(min_size=255, max_size=257)}),
        st.just([]),
    ),
    "created_at": st.one_of(
        st.sampled_from(
            [
                "2026-11-28T10:30:00Z",
                "2026-11-28t10:30:00z",
                "2026-11-28 10:30:00.123456789+05:30",
                "2026-11-28T10:30:00.1234567Z",
                "0001-01-01T00:30:00+01:00",
                "9999-12-31T23:59:59-01:00",
                "2026-02-30T00:00:00Z",
            ]
        ),
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        not_rfc3339(),
    ),
    "account": st.sampled_from(["default", {"whatsapp": "b"}, 5, ""]),
    "note": st.sampled_from(["anything", None, [1]]),
}


@st.composite
def varied_document(draw: st.DrawFn) -> dict[str, Any]:
    """message_doc() with one or two of its fields varied, nulled or removed: the edges of the
    usual shape, where the two readings could part."""
    doc = message_doc()
    for name in draw(st.lists(st.sampled_from(sorted(VARIATIONS)), min_size=1, max_size=2)):
        change = draw(st.sampled_from(["vary", "vary", "vary", "null", "absent"]))
        if change == "vary":
            doc[name] = draw(VARIATIONS[name])
        elif change == "null":
            doc[name] = None
        else:
            doc.pop(name, None)
    return doc


def read_both(value: bytes) -> tuple[Message | None, Message | InvalidRecordError]:
    """(the one-pass reading, None when it declines; the full reading, or its refusal)."""
    fields = read_record(value)
    usual = None if fields.problems else _usual(fields.doc, CHANNELS)
    try:
        full: Message | InvalidRecordError = _read_fully(read_record(value), CHANNELS)
    except InvalidRecordError as refused:
        full = refused
    return usual, full


@settings(max_examples=UNIT_EXAMPLES * 5, deadline=None)
@given(doc=varied_document())
def test_the_one_pass_reading_reads_what_the_full_one_does(doc: dict[str, Any]) -> None:
    usual, full = read_both(encode(doc, "utf8"))

    if usual is not None:  # it takes a record only as the full reading reads it
        assert usual == full


@pytest.mark.parametrize(
    "doc",
    [
        message_doc(),
        message_doc(channels="all", created_at=None, sender_id=None, sender_username=None),
        message_doc(channels=["instagram", "whatsapp", "instagram"], recipients={}),
        message_doc(payload={"type": "text", "content": "hi", "human_agent": True}, note=[1]),
        message_doc(
            message_id="3F2504E0-4F89-11D3-9A0C-0305E82C3301",
            created_at="2026-11-28 10:30:00.5+05:30",
            sender_username="",
            recipients={"whatsapp": ""},
        ),
    ],
)
def test_the_usual_record_is_read_in_one_pass(doc: dict[str, Any]) -> None:
    usual, full = read_both(orjson.dumps(doc))

    assert usual is not None
    assert usual == full
    assert parse_message(orjson.dumps(doc), CHANNELS) == full
