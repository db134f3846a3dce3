"""What the webhooks endpoint's HTTP server (intake/http_server.py) and its application say to
each other: a request's head, the exchange that reads its body, the limits; and what a
connection needs of its server (`Host`)."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any, Literal, Protocol

from chat4all_workers.frozen import frozen
from chat4all_workers.intake.answers import Answer

Refusal = Literal["too_large", "too_slow"]


@frozen(slots=True)
class Head:
    """A request's line and headers. Header names are lower-cased; a repeated header keeps its
    first value."""

    method: str
    path: str  # as sent, percent-encoded
    query: str  # as sent, without the "?"
    headers: dict[str, str]
    content_length: int | None  # None: chunked, or no body


class Exchange(Protocol):
    """A request whose head the application accepted: the server reads its body."""

    def respond(self, body: bytes) -> Answer | Awaitable[Answer]:
        """The answer to the body: now, or an asyncio future the connection awaits by callback
        (its answer written when set), or a coroutine run in the connection's task."""

    def refused(self, reason: Refusal) -> Answer: ...

    def finish(self) -> None:
        """Called once, after the answer or when the request ends unanswered."""


class Application(Protocol):
    def head(self, head: Head) -> Answer | Exchange:
        """At the end of a request's head: the answer now, or an Exchange to read the body."""


@frozen(kw_only=True)
class Limits:
    max_body_bytes: int
    body_timeout_s: float
    header_timeout_s: float
    max_head_bytes: int
    keepalive_timeout_s: float = 75.0  # as aiohttp's server


class Host(Protocol):
    """The server as its connections see it."""

    application: Application
    limits: Limits

    @property
    def draining(self) -> bool: ...

    def opened(self, connection: Any) -> None: ...

    def closed(self, connection: Any) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None: ...
