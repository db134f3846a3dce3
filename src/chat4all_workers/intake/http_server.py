"""The webhooks endpoint's HTTP/1.1 server: an asyncio.Protocol per connection, requests parsed by
httptools (llhttp, Node's parser: request smuggling, bad framing and bad syntax are its to
refuse), answers written in the order the requests came.

Why our own (intake/server.py says with which numbers): the webhooks role's whole work per status
is a signature, a small JSON document, a Redis command and a Kafka record, so a general web
framework's request handling was the largest single cost of a request. This server does only
what the endpoint needs, the way channels/http.py does for the client side:

- HTTP/1.1 and 1.0; keep-alive as the version and `Connection` say (an idle connection closed
  after `Limits.keepalive_timeout_s`); pipelined requests answered in order, one at a time per
  connection (past `_MAX_QUEUED` waiting, the connection is not read until they are answered,
  nor while the peer does not read its answers).
- Bodies by Content-Length or chunked, at most `max_body_bytes` kept; `Expect: 100-continue`
  answered when the body is wanted; no upgrades, no trailers read, no compression.
- The application sees a request's head first (`Application.head`): it answers at once (the body
  is not read: a 404, a refusal) or returns an `Exchange` that gets the body (`respond`), the
  refusal of a body too large or too slow (`refused`), and, exactly once whatever happens,
  `finish`.
- Limits: a head (request line and headers) over `max_head_bytes` or `_MAX_HEADERS` lines is
  431, a request line over `_MAX_URL_BYTES` 414; a head must arrive within `header_timeout_s`
  of its first byte (a new connection's first byte within it too), else 408 (or, with nothing
  sent, a silent close); a body within `body_timeout_s` of its head. Malformed HTTP is 400.
  These, like every answer given before the request's end (the body left unread), close the
  connection: what still arrives is discarded, never kept, for at most `LINGER_S` after the
  answer (our side of the connection shut once the answer is out), so that a sender still
  writing reads the answer rather than a reset; then it is closed.
- Time-outs are checked every `SWEEP_S` by one task per server, not a timer per request.
- A request's handling is the application's answer (`Exchange.respond`): given at once, or a
  future whose answer is written when it is set (the application runs it: the webhooks role
  stores the common notifications of a loop iteration together), or a coroutine run in the
  connection's task, a task of the server's task group. An exception from the application is a
  bug: logged with its traceback, answered 500 (closing), and the server goes on serving the
  others; a future cancelled (the application stopping) is answered 503 (closing). A peer gone
  mid-request does not cancel its handling (the application decides what happened then, as the
  records it produced stay produced).
- Stop (leaving `serving`): the listening socket is closed, idle connections are closed, and
  requests under way finish (answered with `Connection: close`) until `grace_s`; then their
  tasks are cancelled and every connection still open is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from chat4all_workers.intake.http_connection import SWEEP_S, Connection
from chat4all_workers.intake.http_exchange import Application, Limits
from chat4all_workers.listening import BACKLOG
from chat4all_workers.waiting import sweep

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, application: Application, *, limits: Limits) -> None:
        self.application = application
        self.limits = limits
        self._connections: set[Connection] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._live: set[asyncio.Task[None]] = set()  # requests being handled
        self._draining = False
        self._changed = asyncio.Event()  # a connection opened or closed

    @contextlib.asynccontextmanager
    async def serving(
        self, *, sockets: Sequence[socket.socket], grace_s: float
    ) -> AsyncIterator[int]:
        """Serve the listening `sockets` (listening.py) for the block, closing them at its end;
        yields the bound port. On exit the stop described above, within `grace_s`."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            servers = [
                await loop.create_server(lambda: Connection(self), sock=sock, backlog=BACKLOG)
                for sock in sockets
            ]
            sweeper = tasks.create_task(self._sweep(), name="http-server-sweeper")
            try:
                yield int(sockets[0].getsockname()[1])
            finally:
                for server in servers:
                    server.close()
                await self._drain(grace_s)
                sweeper.cancel()

    def stats(self) -> dict[str, int]:
        return {"connections": len(self._connections)}

    # -- used by the connections -------------------------------------------------------------

    def opened(self, connection: Connection) -> None:
        self._connections.add(connection)
        self._changed.set()
        if self._draining:
            connection.drain()

    def closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._changed.set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._tasks is not None, "not serving"
        task = self._tasks.create_task(work)
        self._live.add(task)
        task.add_done_callback(self._live.discard)

    @property
    def draining(self) -> bool:
        return self._draining

    # -- stop and time-outs ------------------------------------------------------------------

    async def _drain(self, grace_s: float) -> None:
        self._draining = True
        for connection in list(self._connections):
            connection.drain()
        try:
            async with asyncio.timeout(grace_s):
                while self._connections:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            log.warning(
                "webhooks: %d connection(s) still busy %gs after the stop; closing them",
                len(self._connections),
                grace_s,
            )
        finally:
            for connection in list(self._connections):
                connection.abort()
            for task in self._live:
                task.cancel()  # handled past the grace period: their answers are not awaited

    async def _sweep(self) -> None:
        """Every `SWEEP_S`, each connection past its deadline acts on it (time-outs)."""
        await sweep(
            SWEEP_S, self._expire, busy=lambda: bool(self._connections), woken=self._changed
        )

    def _expire(self, now: float) -> None:
        for connection in list(self._connections):
            if connection.deadline <= now:
                connection.expire(now)
