"""What the webhooks endpoint answers a request, apart from the HTTP framing (intake/server.py)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from chat4all_workers.frozen import frozen

JSON = "application/json"


@frozen(slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON
    close: bool = False  # the request body was not read: do not keep the connection
    headers: Sequence[tuple[str, str]] = ()  # more headers (405's Allow)


def error(status: int, text: str, *, close: bool = False) -> Answer:
    return Answer(status, orjson.dumps({"error": text}), close=close)
