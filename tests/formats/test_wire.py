"""The field reader, through the formats besides `message_processing` that roles read with it
(status updates, merge requests, fallback items): a broken field is named, junk is explained."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat4all_workers.errors import InvalidRecordError
from chat4all_workers.formats.status_update import parse_update
from chat4all_workers.formats.wire import quote
from chat4all_workers.roles.backfill import InvalidItemError, parse_item
from chat4all_workers.roles.merge import parse_request
from tests.e2e.hostile import (
    MERGE_REQUIRED,
    MERGE_WRONG,
    STATUS_REQUIRED,
    STATUS_WRONG,
    UNIT_EXAMPLES,
    Broken,
    broken_document,
    junk_bytes,
    merge_doc,
    status_doc,
)


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(broken=broken_document(status_doc(), STATUS_WRONG, STATUS_REQUIRED, ["note"]))
def test_parse_update_rejects_a_broken_field_naming_it(broken: Broken) -> None:
    with pytest.raises(InvalidRecordError) as error:
        parse_update(broken.value)

    assert broken.field in str(error.value)


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(broken=broken_document(merge_doc(), MERGE_WRONG, MERGE_REQUIRED, ["note"]))
def test_parse_request_rejects_a_broken_field_naming_it(broken: Broken) -> None:
    with pytest.raises(InvalidRecordError) as error:
        parse_request(broken.value)

    assert broken.field in str(error.value)


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(value=st.one_of(junk_bytes(), st.none()))
def test_every_format_rejects_junk_with_a_reason(value: bytes | None) -> None:
    for parse in (parse_update, parse_request):
        with pytest.raises(InvalidRecordError) as error:
            parse(value)
        assert str(error.value)


def test_parse_update_takes_absent_timestamp_and_details() -> None:
    doc = status_doc(timestamp=None)
    del doc["details"]

    update = parse_update(orjson.dumps(doc))

    assert update.details == {}
    assert update.at.tzinfo is not None


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (status_doc(channel="sms"), 'channel: must be one of whatsapp, instagram, got "sms"'),
        (status_doc(details={"a": ["\x00"]}), "details.a[0]: holds a NUL character"),
        (status_doc(timestamp="2026-11-28T10:30:00"), "timestamp: not an RFC 3339 date-time"),
        (merge_doc(total_chunks=2**31), "total_chunks: 2147483648 is outside the 1..2147483647"),
        (merge_doc(filename=7), "filename: must be a string"),
    ],
)
def test_formats_say_what_is_wrong(doc: dict[str, object], reason: str) -> None:
    parse = parse_update if "new_status" in doc else parse_request

    with pytest.raises(InvalidRecordError) as error:
        parse(orjson.dumps(doc))

    assert reason in str(error.value)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (b"\xff", "not UTF-8: byte 0xff at offset 0"),
        (b'{"message_id": "m", "conversation_id": 1e30}', "conversation_id: about 1e+30 is"),
        (b'{"message_id": "m", "conversation_id": "4a"}', "conversation_id: must be an integer"),
        (b'{"topic": "a b", "value": 1}', 'topic: "a b" is not a topic one may produce to'),
        (b'{"topic": "t", "value": 1, "headers": {"h": 1}}', "headers.h: must be a string"),
        (b'{"note": "\\ud800", "topic": "t", "value": 1}', "note: holds a lone surrogate"),
    ],
)
def test_parse_item_says_what_is_wrong(item: bytes, reason: str) -> None:
    with pytest.raises(InvalidItemError) as error:
        parse_item(item, message_processing_topic="mp")

    assert reason in str(error.value)


def test_parse_item_keys_a_bare_value_by_its_conversation() -> None:
    for conversation in (42, "42"):
        item = orjson.dumps({"message_id": "m", "conversation_id": conversation})

        record = parse_item(item, message_processing_topic="mp")

        assert (record.topic, record.key, record.value) == ("mp", b"conversation:42", item)


def test_quote_keeps_a_reason_on_one_short_line() -> None:
    assert quote("a\nb\u202e\ud800") == '"a\\u000ab\\u202e\\ud800"'
    assert quote('\U0001f4a9 "x"') == '"\U0001f4a9 \\"x\\""'
    assert quote("x" * 100) == '"' + "x" * 40 + '..." (100 chars)'
