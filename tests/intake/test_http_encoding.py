"""An answer's bytes (intake/http_encoding.py): made once per second and reused, never stale."""

from __future__ import annotations

import time

import pytest

from chat4all_workers.intake.answers import Answer
from chat4all_workers.intake.http_encoding import encode


def date_of(data: bytes) -> bytes:
    return data.split(b"\r\nDate: ", 1)[1].split(b"\r\n", 1)[0]


def test_an_answer_is_written_the_same_within_a_second_and_dated_anew_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_764_000_000.2]
    monkeypatch.setattr(time, "time", lambda: now[0])
    answer = Answer(200, b'{"ok":true}')

    first = encode(answer, close=False)
    again = encode(Answer(200, b'{"ok":true}'), close=False)  # an equal answer
    closing = encode(answer, close=True)
    now[0] += 1.0
    next_second = encode(answer, close=False)

    assert again == first
    assert date_of(first) == b"Mon, 24 Nov 2025 16:00:00 GMT"
    assert b"Connection: close\r\n" in closing
    assert b"Connection: close\r\n" not in first
    assert date_of(next_second) == b"Mon, 24 Nov 2025 16:00:01 GMT"
    assert next_second.replace(date_of(next_second), date_of(first)) == first


def test_answers_whatever_their_headers_are_written_in_full() -> None:
    listed = Answer(405, b"no", "text/plain", headers=[("Allow", "GET, POST")])  # unhashable

    data = encode(listed, close=False, head_only=True)

    assert data.startswith(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain\r\n")
    assert b"\r\nAllow: GET, POST\r\n" in data
    assert data.endswith(b"\r\n\r\n")  # a HEAD request's answer: no body
