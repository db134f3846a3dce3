"""The webhooks endpoint's routes: `/webhooks/{channel}[/{app_id}]` on our HTTP/1.1 server
(intake/http_server.py), and the quiet period on stop.

Why a server of our own and not aiohttp's (which the operations endpoints and the mocks keep):
measured with bench/webhooks.py's load generator (one status per POST, 32 connections), a status
cost this process about 0.18 ms of CPU on aiohttp, which alone took 0.062-0.067 ms of it (a
trivial handler under the same load) against Kafka's produce 0.046 ms and the signature, JSON and
parsing 0.02 ms: more than the work it served. A py-spy profile put aiohttp's request handling
and response writing at over half the process's samples. The endpoint needs little of a web
framework: two routes, one POST and one GET, small JSON bodies, the limits of
intake/http_server.py's docstring, which httptools (llhttp) and that module hold.
`bench/webhooks.py` shows the cost it has now against the leanest server doing the same work.

What each request gets (Webhooks, intake/service.py): a GET is the verification; a POST is
refused before its body is read when no app may sign for the path (403), its declared length is
over `max_body_bytes` (413) or `max_concurrent_requests` POSTs are in progress (503); otherwise
it counts in progress from its head to its answer, its body is read (413 past the limit, 408
past `body_timeout_s`), then checked and stored. Another method is 405, another path 404.

On stop the role turns unready at once but keeps answering while POSTs keep coming (until none
came for `_QUIET_S` since the stop, or the shutdown deadline's drain end): a load balancer needs
a moment to notice, and a channel mock in the same process flushes its pending webhooks then.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from urllib.parse import parse_qsl, unquote

from chat4all_workers.config import CHANNELS
from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.intake.answers import Answer
from chat4all_workers.intake.http_exchange import Exchange, Head, Refusal
from chat4all_workers.intake.service import Webhooks

_QUIET_S = 0.5  # stopping: the listener closes once no POST came for this long
_PREFIX = "/webhooks/"
_SIGNATURE = "x-hub-signature-256"  # meta/signature.py's SIGNATURE_HEADER, as the server keeps it
_NOT_FOUND = Answer(404, b"404: Not Found", "text/plain")
_NOT_ALLOWED = Answer(
    405, b"405: Method Not Allowed", "text/plain", headers=(("Allow", "GET, POST"),)
)


class Listener:
    """When the last POST came, for the quiet period on stop."""

    def __init__(self) -> None:
        self.last_request_at = 0.0  # loop time of the last POST's start


class Endpoint:
    """The HTTP server's application: each request routed to the service."""

    def __init__(self, service: Webhooks, listener: Listener) -> None:
        self._service = service
        self._listener = listener
        self._loop = asyncio.get_running_loop()

    def head(self, head: Head) -> Answer | Exchange:
        route = _route(head.path)
        if route is None:
            return _NOT_FOUND
        channel, app_id = route
        if head.method == "GET":
            return self._service.verify(channel, _query(head.query), app_id)
        if head.method != "POST":
            return _NOT_ALLOWED
        early = self._service.refuse_early(channel, head.content_length, app_id)
        if early is not None:
            return early
        self._service.accounting.in_flight += 1  # from the head on: bodies are what fills memory
        self._listener.last_request_at = self._loop.time()
        return _Post(self._service, channel, app_id, head)


class _Post:
    """A POST whose body is read: in progress until `finish`."""

    __slots__ = ("_app_id", "_channel", "_head", "_service")

    def __init__(self, service: Webhooks, channel: str, app_id: str | None, head: Head) -> None:
        self._service = service
        self._channel = channel
        self._app_id = app_id
        self._head = head

    def respond(self, body: bytes) -> Answer | Awaitable[Answer]:
        headers = self._head.headers
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        return self._service.receive(
            self._channel, body, headers.get(_SIGNATURE), content_type, self._app_id
        )

    def refused(self, reason: Refusal) -> Answer:
        if reason == "too_large":
            return self._service.too_large(self._channel)
        return self._service.too_slow(self._channel)

    def finish(self) -> None:
        self._service.accounting.in_flight -= 1


@functools.lru_cache(maxsize=128)
def _route(path: str) -> tuple[str, str | None] | None:
    """(channel, app id or None) of a webhooks path, None for any other path. Remembered per
    path: a deployment's paths are few (a path per channel and app), and every POST asks; at
    most 128, so that a stranger's paths (8 KiB each at most) hold at most 1 MiB."""
    if not path.startswith(_PREFIX):
        return None
    channel, _, app_id = path[len(_PREFIX) :].partition("/")
    channel = unquote(channel)
    if channel not in CHANNELS:
        return None
    if not app_id:
        return (channel, None) if not path.endswith("/") else None
    if "/" in app_id:
        return None
    return channel, unquote(app_id)


def _query(query: str) -> dict[str, str]:
    """The query's parameters, the first value of a repeated one."""
    found: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        found.setdefault(name, value)
    return found


async def until_quiet(service: Webhooks, listener: Listener, deadline: ShutdownDeadline) -> None:
    """Stopping: keep answering while POSTs come (a load balancer still sending, a mock in
    this process flushing its webhooks), until none came for `_QUIET_S` or the drain end."""
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    try:
        async with timeout_at(deadline.drain_end()):
            while True:
                quiet_for = loop.time() - max(stopped_at, listener.last_request_at)
                if quiet_for >= _QUIET_S and not service.accounting.in_flight:
                    return
                await asyncio.sleep(max(0.05, _QUIET_S - quiet_for))
    except TimeoutError:
        return
