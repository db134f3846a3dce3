"""The callback data our sends carry and Meta echoes (meta/callback.py)."""

from __future__ import annotations

import uuid

import orjson

from chat4all_workers.meta.callback import callback_data, callback_ids, our_callback, parse_origin

MESSAGE_ID = str(uuid.UUID(int=7))
CALLBACK = orjson.dumps({"message_id": MESSAGE_ID, "conversation_id": 42}).decode()


def test_callback_data_is_the_small_json_object_of_our_ids() -> None:
    data = callback_data(MESSAGE_ID, 42)

    assert orjson.loads(data) == {"message_id": MESSAGE_ID, "conversation_id": 42}


def test_callback_ids_reads_back_what_callback_data_wrote() -> None:
    assert callback_ids(callback_data(MESSAGE_ID, 2**63 - 1)) == (MESSAGE_ID, 2**63 - 1)


def test_callback_ids_accepts_only_our_shape() -> None:
    assert callback_ids(CALLBACK) == (MESSAGE_ID, 42)
    assert callback_ids('{"message_id": "x", "conversation_id": 42}') is None
    assert callback_ids(f'{{"message_id": "{MESSAGE_ID}", "conversation_id": true}}') is None
    assert callback_ids(f'{{"message_id": "{MESSAGE_ID}", "conversation_id": {2**63}}}') is None
    assert callback_ids("order-1234") is None
    assert callback_ids(None) is None


def test_callback_ids_refuses_json_that_is_not_an_object() -> None:
    assert callback_ids(f'["{MESSAGE_ID}", 42]') is None
    assert callback_ids("42") is None
    assert callback_ids("{") is None
    assert callback_ids(b'{"message_id": "x"}') is None  # not text


def test_callback_ids_gives_the_message_id_in_its_canonical_form() -> None:
    def ids(message_id: str) -> tuple[str, int] | None:
        return callback_ids(
            orjson.dumps({"message_id": message_id, "conversation_id": 42}).decode()
        )

    for spelling in (MESSAGE_ID.upper(), f"{{{MESSAGE_ID}}}", f"urn:uuid:{MESSAGE_ID}"):
        assert ids(spelling) == (MESSAGE_ID, 42), spelling
    assert ids(MESSAGE_ID.replace("-", "")) == (MESSAGE_ID, 42)
    assert ids(MESSAGE_ID[:-1] + "g") is None  # the canonical shape, not hexadecimal
    assert ids(MESSAGE_ID + "\n") is None


def test_our_callback_says_why_an_event_carries_none_of_ours() -> None:
    ignored: list[tuple[str, str]] = []

    ours = our_callback(CALLBACK, "status", ignored)
    absent = our_callback(None, "echo", ignored)
    foreign = our_callback("order-1234", "status", ignored)

    assert ours is not None
    assert (ours.message_id, ours.conversation_id) == (MESSAGE_ID, 42)
    assert (absent, foreign) == (None, None)
    assert ignored == [("echo", "no_callback_data"), ("status", "bad_callback_data")]


def test_parse_origin_reads_only_ascii_digits() -> None:
    assert parse_origin("message_processing:3:1200") == ("message_processing", 3, 1200)
    assert parse_origin("a:b:message_processing:3:1200") == ("a:b:message_processing", 3, 1200)
    assert parse_origin("message_processing:²:1") is None  # a digit to isdigit, not to int()
    assert parse_origin("message_processing:3:-1") is None
    assert parse_origin(":3:1") is None
