"""The HTTP client of the channel adapters (and of the mocks' webhooks): JSON POSTs over
kept-alive HTTP/1.1 connections.

Why not aiohttp's ClientSession, which the rest of the stack (miniopy-async, the mocks) uses: one
request through it cost about 140 us of CPU here, the largest single cost of routing a message
and 40 % of it. This client does only what the channel APIs need and costs about a quarter of
that: a POST with a few headers and a body, over http or https (certificates verified, SNI),
responses parsed by httptools (the C parser uvicorn uses: content-length, chunked, keep-alive
rules), connections kept alive and reused per origin, one total timeout per request. No
redirects, cookies, proxies or compression: the channel APIs need none, and a request never
goes anywhere but the configured URL. A body must come with a length (Content-Length or chunked,
as every API answer here does); one that only ends when the server closes is an error.

A request that fails on the wire is never retried here: a POST is not idempotent, so the caller
(the router, with its dedup lease) decides. To decide, it needs to know whether the provider may
have the request: every failure says so in `request_written` (HTTPTransportError and
RequestTimeoutError). False: nothing left this process (refused, unreachable, a TLS or connect
failure, a connect timeout); true: the request was written, and then the answer did not come
(a timeout, a reset, a garbled answer), so the provider may have acted on it. To keep such
failures rare, an idle connection is dropped after `idle_timeout_s`, before servers usually close
theirs (60 s or more).

A request cancelled after it was written is finished anyway: `post` waits for its answer (still
bounded by its timeout), returns it (or raises its failure), and delivers the cancellation at
the caller's next await. Why: the provider may act on a written request whatever the caller
does, so the caller (the router, with its dedup lease) needs the answer to record it, not a
cancellation that throws it away. This costs nothing on the normal path (no task, no shield per
request). Cancelled a second time while finishing, `post` gives up and raises
RequestCancelledError (a CancelledError) with `request_written` set: the answer stays unknown.
A cancel while connecting (nothing written) is a plain cancellation.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from chat4all_workers.frozen import frozen
from chat4all_workers.waiting import sweep

_MAX_BODY_BYTES = 1024 * 1024  # a channel API answers with a few hundred bytes of JSON
_SWEEP_S = 0.05  # how late a request may time out


class HTTPTransportError(ConnectionError):
    """The request did not get a complete, well-formed answer: refused, reset, closed early or
    garbled. `request_written` says whether the provider may have acted on it."""

    def __init__(self, message: str, *, request_written: bool = True) -> None:
        super().__init__(message)
        self.request_written = request_written


class RequestCancelledError(asyncio.CancelledError):
    """Cancelled again while finishing a written request: its answer is unknown."""

    request_written = True


class RequestTimeoutError(TimeoutError):
    """No complete answer within the request's timeout; `request_written` as above."""

    def __init__(self, message: str, *, request_written: bool) -> None:
        super().__init__(message)
        self.request_written = request_written


@frozen
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


@frozen
class _Origin:
    secure: bool
    host: str
    port: int


@frozen
class _Target:
    origin: _Origin
    head: bytes  # "POST /path HTTP/1.1\r\nHost: ...\r\n"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: one request at a time, its response parsed as it arrives."""

    def __init__(self) -> None:
        # Made by `create_connection`, in the loop it lives in: looked up once (on Python 3.11
        # each look is a system call: batching.py).
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        # The outcome of a request whose waiter was cancelled, kept for `finish()`.
        self._unclaimed: Response | BaseException | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server talking out of turn
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPTransportError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f": {exc}" if exc else ""
        self._fail(HTTPTransportError(f"connection closed before the response ended{reason}"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer to one request
            raise HTTPTransportError("an HTTP response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > _MAX_BODY_BYTES:
            self._fail(HTTPTransportError(f"response body over {_MAX_BODY_BYTES} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        response = Response(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self._headers, self._body, self._body_size = {}, [], 0
        if not self._parser.should_keep_alive():
            self.close()
        self._resolve(response)

    # -- used by the client ------------------------------------------------------------------

    async def request(self, data: bytes) -> Response:
        assert self._transport is not None, "not connected"
        assert self._waiter is None, "one request at a time"
        self._waiter = self._loop.create_future()
        self._transport.write(data)
        return await self._waiter

    async def finish(self) -> Response:
        """After `request` was cancelled: its answer (or failure), whenever it comes."""
        outcome, self._unclaimed = self._unclaimed, None
        if isinstance(outcome, Response):
            return outcome
        if outcome is not None:
            raise outcome
        self._waiter = self._loop.create_future()
        return await self._waiter

    def time_out(self) -> None:
        self._resolve(RequestTimeoutError("no complete answer in time", request_written=True))
        self.close()

    def _fail(self, exc: HTTPTransportError) -> None:
        self._resolve(exc)
        self.close()

    def _resolve(self, outcome: Response | BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if not waiter.done():
            if isinstance(outcome, Response):
                waiter.set_result(outcome)
            else:
                waiter.set_exception(outcome)
        elif waiter.cancelled():  # its caller was cancelled: `finish()` will want it
            self._unclaimed = outcome

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()  # unsent data or an unread answer is worthless now


class HttpClient:
    """POSTs to a few origins, connections kept alive per origin. One per process, shared.

    The number of connections follows the number of requests in flight (the router bounds that
    with `kafka.max_in_flight`); at most `max_idle_per_origin` are kept open when idle.
    """

    def __init__(
        self,
        *,
        idle_timeout_s: float = 15.0,
        max_idle_per_origin: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "chat4all-workers",
    ) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._user_agent = user_agent
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._busy: dict[_Connection, float] = {}  # requests under way, and their deadlines
        self._working = asyncio.Event()  # set while requests are under way: the sweeper sweeps
        self._tasks: asyncio.TaskGroup | None = None  # owns the sweeper while the client is open
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it is open in
        self._targets: dict[str, _Target] = {}
        self._closed = False

    async def post(
        self, url: str, *, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> Response:
        """Send one POST and read the whole answer within `timeout_s` (connecting included).

        Raises RequestTimeoutError or HTTPTransportError, each saying in `request_written`
        whether the request left this process.
        """
        loop = self._loop
        if self._closed or loop is None:
            raise RuntimeError("the HTTP client is closed (or was never opened: async with)")
        target = self._target(url)
        data = b"".join((target.head, _header_block(headers, len(body)), body))
        deadline = loop.time() + timeout_s
        connection = self._reuse(target.origin)
        if connection is None:
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect(target.origin)
            except TimeoutError:
                raise RequestTimeoutError(
                    f"could not connect within {timeout_s}s", request_written=False
                ) from None
            except OSError as exc:  # refused, unreachable, TLS
                raise HTTPTransportError(
                    f"{type(exc).__name__}: {exc}", request_written=False
                ) from exc
        # The answer is awaited without a timer of its own: the sweeper fails requests past
        # their deadline (a timer per request cost more than parsing the answer).
        self._busy[connection] = deadline
        self._working.set()
        try:
            try:
                response = await connection.request(data)
            except asyncio.CancelledError:
                response = await _finish_cancelled(connection)
        except BaseException:
            connection.close()  # failed or given up mid-exchange: its state is unknown
            raise
        finally:
            self._busy.pop(connection, None)
        self._keep(target.origin, connection)
        return response

    async def __aenter__(self) -> HttpClient:
        """Open: the sweeper that times requests out runs, owned by the client, until exit."""
        tasks = asyncio.TaskGroup()
        await tasks.__aenter__()
        tasks.create_task(self._sweep(), name="http-client-sweeper")
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        if self._tasks is not None:
            tasks, self._tasks = self._tasks, None
            await tasks.__aexit__(None, None, None)

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()
        self._working.set()  # the sweeper sees the client closed, and ends

    # -- deadlines ---------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Fail every request past its deadline, checking every `_SWEEP_S` while any is under
        way (a request times out at most that late); idle while none is, until closed."""
        await sweep(
            _SWEEP_S,
            self._time_out,
            busy=lambda: bool(self._busy),
            woken=self._working,
            done=lambda: self._closed,
        )

    def _time_out(self, now: float) -> None:
        for connection, deadline in list(self._busy.items()):
            if deadline <= now:
                connection.time_out()

    # -- connections -------------------------------------------------------------------------

    def _reuse(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        deadline = time.monotonic() - self._idle_timeout_s
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.closed and connection.idle_since > deadline:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if origin.secure else None
        _, connection = await loop.create_connection(
            _Connection,
            origin.host,
            origin.port,
            ssl=context,
            server_hostname=origin.host if context else None,
        )
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # system CAs, hostname checked
        return self._ssl

    def _keep(self, origin: _Origin, connection: _Connection) -> None:
        if connection.closed:
            return
        if self._closed:  # closed while this request was under way
            connection.close()
            return
        idle = self._idle.setdefault(origin, deque())
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _target(self, url: str) -> _Target:
        """The parsed URL; adapters post to one or two URLs, so each is parsed once."""
        target = self._targets.get(url)
        if target is None:
            target = _parse_target(url, self._user_agent)
            if len(self._targets) < 64:
                self._targets[url] = target
        return target


async def _finish_cancelled(connection: _Connection) -> Response:
    """A written request's caller was cancelled: wait for the answer (the sweeper still applies
    the deadline), then deliver the cancellation at the caller's next await."""
    task = asyncio.current_task()
    assert task is not None
    try:
        response = await connection.finish()
    except asyncio.CancelledError:
        raise RequestCancelledError("cancelled again while finishing the request") from None
    except BaseException:
        _cancel_later(task)
        raise
    _cancel_later(task)
    return response


def _cancel_later(task: asyncio.Task[object]) -> None:
    """The cancellation caught in `post`, delivered again at the task's next await."""
    task.uncancel()
    task.cancel()


def _parse_target(url: str, user_agent: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    secure = parts.scheme == "https"
    default_port = 443 if secure else 80
    port = parts.port or default_port
    host = parts.hostname
    host_header = host if ":" not in host else f"[{host}]"
    if port != default_port:
        host_header = f"{host_header}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if any(c in path for c in " \t\r\n\x00"):
        raise ValueError(f"URL path with whitespace or a control character: {url!r}")
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
    return _Target(_Origin(secure, host, port), head.encode("latin-1"))


def _header_block(headers: Mapping[str, str], content_length: int) -> bytes:
    lines = []
    for name, value in headers.items():
        # A value from configuration (a token) must not smuggle in a header of its own.
        if not name or _breaks_a_line(name) or ":" in name or _breaks_a_line(value):
            raise ValueError(f"HTTP header {name!r:.40} has a line break, NUL or bad name")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {content_length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


def _breaks_a_line(text: str) -> bool:
    return "\r" in text or "\n" in text or "\x00" in text
