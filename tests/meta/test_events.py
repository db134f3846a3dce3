"""The readers both webhook parsers share (meta/events.py)."""

from __future__ import annotations

from chat4all_workers.meta.events import parse_body


def test_parse_body_reads_a_json_document() -> None:
    assert parse_body(b'{"object": "instagram"}') == ({"object": "instagram"}, None)


def test_parse_body_says_what_is_wrong_with_a_body_that_is_not_json() -> None:
    doc, problem = parse_body(b"{nope")

    assert doc is None
    assert problem is not None
    assert problem.startswith("body is not JSON: ")
