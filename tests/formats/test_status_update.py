"""The `message_status_updates` format (formats/status_update.py): the record `status_record`
writes (value and key) and what `parse_update` reads back from it, or why it refuses.

(tests/formats/test_wire.py feeds `parse_update` broken and junk documents through the field
reader.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from chat4all_workers.errors import InvalidRecordError
from chat4all_workers.formats.status_update import StatusUpdate, parse_update, status_record

MESSAGE_ID = "7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11"
AT = datetime(2026, 11, 28, 10, 30, 0, 123456, tzinfo=UTC)


def test_status_record_writes_the_contracts_fields_keyed_by_conversation() -> None:
    record = status_record(
        "statuses",
        message_id=MESSAGE_ID,
        conversation_id=42,
        channel="whatsapp",
        status="SENT",
        details={"provider_message_id": "wamid.1"},
        at=AT,
    )

    assert (record.topic, record.key) == ("statuses", b"conversation:42")
    assert orjson.loads(record.value or b"") == {
        "message_id": MESSAGE_ID,
        "conversation_id": 42,
        "channel": "whatsapp",
        "new_status": "SENT",
        "timestamp": "2026-11-28T10:30:00.123456+00:00",
        "details": {"provider_message_id": "wamid.1"},
    }


@pytest.mark.parametrize(
    "at",
    [
        AT,
        datetime(2026, 11, 28, 10, 30, tzinfo=UTC),  # no fraction written when it has none
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_status_record_writes_the_time_as_isoformat_does(at: datetime) -> None:
    record = status_record(
        "statuses", message_id=MESSAGE_ID, conversation_id=1, channel="whatsapp", status="READ",
        details={}, at=at,
    )  # fmt: skip

    assert orjson.loads(record.value or b"")["timestamp"] == at.isoformat()


def test_status_record_without_a_time_is_stamped_now_in_utc() -> None:
    before = datetime.now(UTC)

    record = status_record(
        "statuses",
        message_id=MESSAGE_ID,
        conversation_id=1,
        channel="instagram",
        status="FAILED",
        details={},
    )

    stamped = datetime.fromisoformat(orjson.loads(record.value or b"")["timestamp"])
    assert stamped.utcoffset() == timedelta(0)
    assert before <= stamped <= datetime.now(UTC)


def test_parse_update_reads_back_what_status_record_wrote() -> None:
    details = {"reason": "HTTP 400 (131026): undeliverable", "attempts": 1, "provider_code": 131026}
    record = status_record(
        "statuses",
        message_id=MESSAGE_ID,
        conversation_id=2**63 - 1,
        channel="instagram",
        status="FAILED",
        details=details,
        at=AT,
    )

    update = parse_update(record.value)

    assert update == StatusUpdate(
        message_id=uuid.UUID(MESSAGE_ID),
        conversation_id=2**63 - 1,
        channel="instagram",
        status="FAILED",
        at=AT,
        details=details,
    )


def test_parse_update_refuses_a_tombstone() -> None:
    with pytest.raises(InvalidRecordError, match=r"^tombstone: the record has no value$"):
        parse_update(None)


def test_parse_update_names_every_field_that_is_wrong() -> None:
    value = orjson.dumps(
        {"message_id": "x", "conversation_id": "7", "channel": "sms", "new_status": "SENDING"}
    )

    with pytest.raises(InvalidRecordError) as error:
        parse_update(value)

    assert str(error.value) == (
        'message_id: not a UUID: "x"; conversation_id: must be an integer, got a string; '
        'channel: must be one of whatsapp, instagram, got "sms"; '
        "new_status: must be one of ACCEPTED, PROCESSING, SENT, DELIVERED, READ, FAILED, "
        'got "SENDING"'
    )


def test_parse_update_takes_a_null_timestamp_as_now_and_null_details_as_none() -> None:
    doc = {"message_id": MESSAGE_ID, "conversation_id": 1, "channel": "whatsapp"}
    value = orjson.dumps({**doc, "new_status": "DELIVERED", "timestamp": None, "details": None})
    before = datetime.now(UTC)

    update = parse_update(value)

    assert update.details == {}
    assert before <= update.at <= datetime.now(UTC)
