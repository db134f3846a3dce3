"""An answer of the webhooks endpoint's HTTP/1.1 server as the bytes written to the connection
(intake/http_connection.py writes them, in order): the status line, Content-Type,
Content-Length, Date (made once a second), the answer's own headers, Connection when it differs
from the version's default, and the body (none for a HEAD request)."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from chat4all_workers.intake.answers import Answer


def encode(
    answer: Answer, *, close: bool, head_only: bool = False, http_1_0: bool = False
) -> bytes:
    """`answer` as sent; `close`: the connection closes after it; `http_1_0`: the request was
    HTTP/1.0, whose default is to close (kept alive, it says so).

    The bytes of an answer are made once per second (its Date) and reused: the webhooks role
    answers most notifications with the same 200 (intake/service.py), and making its bytes cost
    2.0 us against 0.6 for the lookup."""
    now = int(time.time())
    key = (answer, close, head_only, http_1_0)
    try:
        made = _encoded.get(key)
    except TypeError:  # headers given as a list: not kept
        return _encode(answer, close=close, head_only=head_only, http_1_0=http_1_0)
    if made is not None and made[0] == now:
        return made[1]
    data = _encode(answer, close=close, head_only=head_only, http_1_0=http_1_0)
    if len(_encoded) >= _ENCODED_MAX:
        _encoded.clear()
    _encoded[key] = (now, data)
    return data


# Answers' bytes, by (answer, close, head_only, http_1_0): the second they were made in, and
# the bytes. Answers are values (equal ones share an entry); a handful are common.
_encoded: dict[tuple[Answer, bool, bool, bool], tuple[int, bytes]] = {}
_ENCODED_MAX = 64


def _encode(answer: Answer, *, close: bool, head_only: bool, http_1_0: bool) -> bytes:
    lines = [
        _status_line(answer.status),
        b"Content-Type: ",
        answer.content_type.encode("latin-1"),
        b"\r\nContent-Length: ",
        str(len(answer.body)).encode(),
        b"\r\nDate: ",
        _http_date(),
        b"\r\n",
    ]
    for name, value in answer.headers:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        lines.append(b"Connection: close\r\n")
    elif http_1_0:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(answer.body)
    return b"".join(lines)


def answer_of(status: int) -> Answer:
    """The server's own answer: the status and its phrase, as text; the connection closes."""
    text = f"{status}: {HTTPStatus(status).phrase}"
    return Answer(status, text.encode(), "text/plain", close=True)


INTERNAL_ERROR = answer_of(500)
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
    return line


_date: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header's value, made once per second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date[1]
