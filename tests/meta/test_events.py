"""The readers both webhook parsers share (meta/events.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chat4all_workers.meta.events import parse_body, unix_seconds


def test_parse_body_reads_a_json_document() -> None:
    assert parse_body(b'{"object": "instagram"}') == ({"object": "instagram"}, None)


def test_parse_body_says_what_is_wrong_with_a_body_that_is_not_json() -> None:
    doc, problem = parse_body(b"{nope")

    assert doc is None
    assert problem is not None
    assert problem.startswith("body is not JSON: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1764000000", datetime(2025, 11, 24, 16, 0, tzinfo=UTC)),
        (1764000001, datetime(2025, 11, 24, 16, 0, 1, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
        ("", None),
        ("-1", None),
        ("1764000000.5", None),
        ("1" * 13, None),
        ("253402300800", None),  # past what a datetime holds
        ("²", None),  # a digit to str.isdigit, not to int(): refused, not raised
        ("\uff11\uff17", None),  # digits, but not ASCII ones
        (True, None),
        (None, None),
    ],
)
def test_unix_seconds_reads_only_ascii_digits_within_range(value: object, expected: object) -> None:
    assert unix_seconds(value) == expected
    assert unix_seconds(value) == expected  # the same string again: the one remembered
    assert unix_seconds("1764000002") == datetime(2025, 11, 24, 16, 0, 2, tzinfo=UTC)
    assert unix_seconds(value) == expected  # after another string was remembered
