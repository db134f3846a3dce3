"""The webhooks endpoint's HTTP framing: `/webhooks/{channel}[/{app_id}]` on aiohttp's server.

Why aiohttp's server and not one of our own on httptools (as channels/http.py is for the
client): measured with bench/webhooks.py's load generator, a status posted alone costs this
process about 0.17-0.19 ms of CPU; aiohttp's request handling is 0.062-0.067 ms of it (a
trivial handler under the same load), Kafka's produce 0.046 ms, the signature, JSON and parsing
0.02 ms. An internet-facing HTTP parser of our own (request smuggling, slow senders, limits) was
not worth a fifth of the CPU.

On stop the role turns unready at once but keeps answering while POSTs keep coming (until none
came for `_QUIET_S` since the stop, or the shutdown deadline's drain end): a load balancer needs
a moment to notice, and a channel mock in the same process flushes its pending webhooks then.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from chat4all_workers.config import CHANNELS
from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.intake.answers import Answer
from chat4all_workers.intake.service import Webhooks

_QUIET_S = 0.5  # stopping: the listener closes once no POST came for this long
# A body left unread (413, 408, 503): after the answer, what still arrives is discarded, never
# kept, for at most this long (aiohttp's default is 10 s), so that a sender still writing reads
# the answer rather than a reset; then the connection is closed.
LINGER_S = 2.0


class Listener:
    """When the last POST came, for the quiet period on stop."""

    def __init__(self) -> None:
        self.last_request_at = 0.0  # loop time of the last POST's start


def build_app(
    service: Webhooks, listener: Listener, *, max_body_bytes: int, body_timeout_s: float
) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    for channel in CHANNELS:

        async def get(request: web.Request, channel: str = channel) -> web.Response:
            app_id = request.match_info.get("app")
            return _response(service.verify(channel, request.query, app_id))

        async def post(request: web.Request, channel: str = channel) -> web.Response:
            app_id = request.match_info.get("app")
            early = service.refuse_early(channel, request.content_length, app_id)
            if early is not None:
                return _response(early)
            accounting = service.accounting
            accounting.in_flight += 1  # from the first byte read: bodies are what fills memory
            listener.last_request_at = asyncio.get_running_loop().time()
            try:
                try:
                    # A slow sender must not hold its slot: Meta sends a body at once.
                    async with asyncio.timeout(body_timeout_s):
                        body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    return _response(service.too_large(channel))
                except TimeoutError:
                    return _response(service.too_slow(channel))
                signature = request.headers.get("X-Hub-Signature-256")
                answer = await service.receive(
                    channel, body, signature, request.content_type, app_id
                )
            finally:
                accounting.in_flight -= 1
            return _response(answer)

        # One URL for every app, or one per app (the app's dashboard names its own).
        for path in (f"/webhooks/{channel}", f"/webhooks/{channel}/{{app}}"):
            app.router.add_get(path, get, allow_head=False)
            app.router.add_post(path, post)
    return app


def _response(answer: Answer) -> web.Response:
    response = web.Response(
        body=answer.body, status=answer.status, content_type=answer.content_type
    )
    if answer.close:
        response.force_close()
    return response


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
