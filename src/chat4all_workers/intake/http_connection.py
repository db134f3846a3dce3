"""One HTTP/1.1 connection of the webhooks endpoint's server (intake/http_server.py says what it
does and refuses): an asyncio.Protocol whose requests httptools parses, answered in order."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

import httptools

from chat4all_workers.intake.answers import Answer
from chat4all_workers.intake.http_encoding import INTERNAL_ERROR, answer_of, encode
from chat4all_workers.intake.http_exchange import Exchange, Head, Host, Refusal

log = logging.getLogger(__name__)

# After an answer given before the request's end, what still arrives is discarded for at most
# this long (aiohttp's default was 10 s), then the connection is closed.
LINGER_S = 2.0
SWEEP_S = 0.1  # how late a time-out may fire
_MAX_QUEUED = 8  # pipelined requests waiting on one connection before it is no longer read
_MAX_HEADERS = 100
_MAX_URL_BYTES = 8 * 1024


class _Reading(enum.Enum):
    IDLE = "idle"  # between requests
    HEAD = "head"  # a head partly received
    BODY = "body"  # reading the body of `_exchange`
    SKIP = "skip"  # the rest of a request answered at its head (keep-alive, no body)
    DONE = "done"  # nothing more is parsed: what arrives is discarded


@dataclass(slots=True)
class _Ready:
    """An answer to write when its turn comes."""

    data: bytes
    close: bool


@dataclass(slots=True)
class _Pending:
    """A request read whole, to be handled when its turn comes."""

    exchange: Exchange
    body: bytes
    keep_alive: bool
    head_only: bool  # a HEAD request: the answer has no body


# A request under way in the worker: its answer, to await.
_Job = tuple[_Pending, Awaitable[Answer]]


class _Stop(Exception):
    """Raised in a parser callback to stop parsing the connection (the answer is owed)."""


class Connection(asyncio.Protocol):
    def __init__(self, server: Host) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._reading = _Reading.IDLE
        self.deadline = math.inf  # loop time; the sweeper calls `expire` past it
        # The request being parsed.
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._head_size = 0  # bytes received of a head not parsed whole yet
        self._head_parsed = 0  # bytes of its request target and headers parsed so far
        self._header_count = 0
        self._exchange: Exchange | None = None
        self._head_only = False
        self._body: list[bytes] = []
        self._body_size = 0
        # Answers owed, in order: the first may be under way (`_handling`).
        self._owed: deque[_Ready | _Pending] = deque()
        self._handling = False
        # The connection's task that awaits the answers given as coroutines, one after the
        # other: started with the first, it waits on `_idle` for the next (a task per request
        # cost more). Answers given now or as futures need no task.
        self._worker = False
        self._next: _Job | None = None
        self._idle: asyncio.Future[_Job | None] | None = None
        self._closing = False  # after the owed answers, close
        self._unread = False  # input may still arrive after the last answer: linger
        self._draining = False  # stopping: no new request after the current one
        self._read_paused = False
        self._write_paused = False
        self._lingering = False
        self._gone = False  # connection_lost

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.deadline = self._loop.time() + self._limits.header_timeout_s
        self._server.opened(self)

    def data_received(self, data: bytes) -> None:
        reading = self._reading
        if reading is _Reading.DONE:
            return  # discarded
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                raise  # a bug in a callback: asyncio logs it and closes the connection
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._reading is not _Reading.DONE:
                log.debug("webhooks: malformed HTTP request: %s", exc)
                self._fail(Answer(400, b"400: Bad Request", "text/plain", close=True))
            return
        if reading is _Reading.HEAD and self._reading is _Reading.HEAD:
            # A head still incomplete (httptools keeps what it has seen of it): bounded here,
            # as each whole header is (`on_header`, `on_headers_complete`).
            self._head_size += len(data)
            if self._head_size > self._limits.max_head_bytes:
                self._fail(answer_of(431))

    def eof_received(self) -> bool:
        if self._lingering or not self._owed:
            return False  # close
        # A half-closed peer still gets the answers it is owed; then the connection closes.
        self._stop_reading()
        self._closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._stop_reading()
        self.deadline = math.inf
        # Requests not under way yet end here; the one under way ends in its task.
        for item in list(self._owed)[1 if self._handling else 0 :]:
            if isinstance(item, _Pending):
                item.exchange.finish()
        self._owed.clear()
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)  # the worker ends
        self._server.closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True  # the peer does not read its answers: take no more requests
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._draining:
            self._stop_reading()
            self._closing = True
            self._advance()
            raise _Stop
        self._reading = _Reading.HEAD
        self._url, self._headers = [], {}
        self._head_size = self._head_parsed = 0
        self._header_count = 0
        self.deadline = self._loop.time() + self._limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_parsed += len(url)  # the target comes before any header
        if self._head_parsed > _MAX_URL_BYTES:
            self._refuse_head(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's size counted as it comes (a repeated header too), not summed again at its
        # end: a head over the limit is refused at the header that breaks it.
        self._header_count += 1
        self._head_parsed += len(name) + len(value)
        if self._header_count > _MAX_HEADERS or self._head_parsed > self._limits.max_head_bytes:
            self._refuse_head(431)
        self._headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self._head_parsed > self._limits.max_head_bytes:  # a long target, few headers
            self._refuse_head(431)
        url = b"".join(self._url)
        self._url = []
        headers, self._headers = self._headers, {}
        if self._parser.should_upgrade():  # Upgrade (h2c, websocket) or CONNECT
            self._refuse_head(400, b"400: protocol upgrades are not supported")
        method = self._parser.get_method().decode("ascii")
        path, _, query = url.decode("latin-1").partition("?")
        if not path.startswith("/"):  # absolute form (a proxy's), or "*"
            with contextlib.suppress(httptools.HttpParserInvalidURLError):
                parsed = httptools.parse_url(url)
                path = (parsed.path or b"").decode("latin-1")
                query = (parsed.query or b"").decode("latin-1")
        length = headers.get("content-length")
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        head = Head(method, path, query, headers, int(length) if length is not None else None)
        self._head_only = method == "HEAD"
        try:
            taken = self._server.application.head(head)
        except Exception:  # a bug of the application: logged, answered 500
            log.exception("webhooks: error handling the head of %s %s", method, path)
            taken = INTERNAL_ERROR
        if isinstance(taken, Answer):
            close = taken.close or has_body or not self._parser.should_keep_alive()
            self._owe(_Ready(self._encode(taken, close=close, head_only=self._head_only), close))
            if close:
                self._unread = has_body
                self._stop_reading()
                self._advance()
                raise _Stop
            self._reading = _Reading.SKIP
            self._advance()
            return
        self._exchange = taken
        self._reading = _Reading.BODY
        self._body, self._body_size = [], 0
        self.deadline = self._loop.time() + self._limits.body_timeout_s
        if (
            headers.get("expect", "").lower() == "100-continue"
            and not self._owed
            and self._transport is not None
            and self._parser.get_http_version() == "1.1"
        ):
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._exchange is None:
            return
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._refuse_body("too_large")
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive() and not self._draining
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body = []
            self._owe(_Pending(exchange, body, keep_alive, self._head_only))
        self._reading = _Reading.IDLE
        self.deadline = math.inf if self._owed else self._idle_deadline()
        if not keep_alive:
            self._closing = True
            self._stop_reading()
        self._advance()

    # -- answering, in order -----------------------------------------------------------------

    def _owe(self, item: _Ready | _Pending) -> None:
        self._owed.append(item)
        if len(self._owed) >= _MAX_QUEUED:
            self._update_reading()

    def _advance(self) -> None:
        """Write what is ready, in order, until a request must be handled first."""
        transport = self._transport
        while self._owed and not self._handling:
            item = self._owed[0]
            if isinstance(item, _Pending):
                self._dispatch(item)
                return
            self._owed.popleft()
            if transport is not None and not transport.is_closing():
                transport.write(item.data)
            if item.close:  # nothing after a closing answer is answered
                self._closing = True
                self._stop_reading()
                for dropped in self._owed:
                    if isinstance(dropped, _Pending):
                        dropped.exchange.finish()
                self._owed.clear()
                break
        if self._read_paused and len(self._owed) < _MAX_QUEUED:
            self._update_reading()
        if self._closing and not self._owed and not self._handling:
            self._close()
        elif not self._owed and self._reading is _Reading.IDLE:
            self.deadline = self._idle_deadline()

    def _dispatch(self, item: _Pending) -> None:
        """Start handling `item`: its answer now, when its future is done, or from the
        connection's worker task (started for it if there is none yet)."""
        self._handling = True
        try:
            answer = item.exchange.respond(item.body)
        except Exception:  # a bug of the application: logged, answered 500
            log.exception("webhooks: error handling a request")
            answer = INTERNAL_ERROR
        if isinstance(answer, Answer):
            self._answered(item, answer)
        elif isinstance(answer, asyncio.Future):
            answer.add_done_callback(functools.partial(self._settled, item))
        elif self._idle is not None:
            idle, self._idle = self._idle, None
            idle.set_result((item, answer))
        elif self._worker:  # between two requests: it takes this one next
            self._next = (item, answer)
        else:
            self._worker = True
            self._server.spawn(self._work((item, answer)))

    def _settled(self, item: _Pending, future: asyncio.Future[Answer]) -> None:
        """The future `item`'s application gave is done: its answer written in turn."""
        if future.cancelled():  # stopping: the application gave up on it
            answer = answer_of(503)
        elif (exc := future.exception()) is not None:  # a bug of the application
            log.error("webhooks: error handling a request", exc_info=exc)
            answer = INTERNAL_ERROR
        else:
            answer = future.result()
        self._answered(item, answer)

    async def _work(self, job: _Job | None) -> None:
        try:
            while job is not None:
                await self._handle(*job)
                job, self._next = self._next, None
                if job is None and self._transport is not None and not self._gone:
                    self._idle = self._loop.create_future()
                    job = await self._idle  # None: the connection is gone
        finally:
            self._worker = False
            self._idle = None

    async def _handle(self, item: _Pending, answering: Awaitable[Answer]) -> None:
        try:
            answer = await answering
        except Exception:  # a bug of the application: logged, answered 500
            log.exception("webhooks: error handling a request")
            answer = INTERNAL_ERROR
        except BaseException:
            self._handling = False
            item.exchange.finish()
            raise
        self._answered(item, answer)

    def _answered(self, item: _Pending, answer: Answer) -> None:
        """`item`, under way, has its answer: written, and the next request started."""
        item.exchange.finish()
        self._handling = False
        if not self._owed or self._owed[0] is not item:
            return  # the connection is gone
        self._owed.popleft()
        close = answer.close or not item.keep_alive or self._draining
        data = self._encode(answer, close=close, head_only=item.head_only)
        self._owed.appendleft(_Ready(data, close))
        self._advance()

    def _encode(self, answer: Answer, *, close: bool, head_only: bool = False) -> bytes:
        http_1_0 = self._parser.get_http_version() == "1.0"
        return encode(answer, close=close, head_only=head_only, http_1_0=http_1_0)

    # -- refusals, time-outs, closing --------------------------------------------------------

    def _refuse_head(self, status: int, text: bytes = b"") -> None:
        """In a parser callback: the head breaks a limit; answered, nothing more parsed."""
        answer = answer_of(status)
        self._fail(Answer(status, text, answer.content_type, close=True) if text else answer)
        raise _Stop

    def _fail(self, answer: Answer) -> None:
        """Answer (after those owed) and close; nothing more is parsed."""
        self._unread = True
        self._owe(_Ready(self._encode(answer, close=True), True))
        self._stop_reading()
        self._advance()

    def _refuse_body(self, reason: Refusal) -> None:
        exchange, self._exchange = self._exchange, None
        assert exchange is not None
        self._body = []
        try:
            answer = exchange.refused(reason)
        finally:
            exchange.finish()
        self._unread = True
        self._owe(_Ready(self._encode(answer, close=True), True))
        self._stop_reading()
        self._advance()

    def expire(self, now: float) -> None:
        """Past the deadline of the current state (the sweeper calls it)."""
        state = self._reading
        if self._lingering:
            self.abort()
        elif state is _Reading.BODY and self._exchange is not None:
            self._refuse_body("too_slow")
        elif state is _Reading.HEAD:
            self._fail(answer_of(408))
        elif not self._owed and not self._handling:
            self._close()  # idle past the keep-alive time, or a new connection that sent nothing
        else:
            self.deadline = math.inf  # answers under way: their handling bounds itself

    def drain(self) -> None:
        """Stopping: no new request; close once idle (now, if it is)."""
        self._draining = True
        if self._lingering:
            self.abort()
        elif self._reading is _Reading.IDLE and not self._owed and not self._handling:
            self._close()
        elif self._reading in (_Reading.HEAD, _Reading.IDLE):
            self._stop_reading()  # a partial head is dropped; the answers owed are written
            self._closing = True
            self._advance()

    def _stop_reading(self) -> None:
        """Parse nothing more; a body being read is dropped (its exchange finished)."""
        self._reading = _Reading.DONE
        if self._exchange is not None:
            exchange, self._exchange = self._exchange, None
            self._body = []
            exchange.finish()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or len(self._owed) >= _MAX_QUEUED
        if pause and not self._read_paused:
            transport.pause_reading()
        elif not pause and self._read_paused:
            transport.resume_reading()
        self._read_paused = pause

    def _close(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not self._unread:
            transport.close()
            return
        # Input may still come: our side is shut once the answers are out, the rest discarded.
        self._lingering = True
        self._reading = _Reading.DONE
        self.deadline = self._loop.time() + LINGER_S
        if self._read_paused:
            transport.resume_reading()
            self._read_paused = False
        if transport.can_write_eof():
            transport.write_eof()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _idle_deadline(self) -> float:
        return self._loop.time() + self._limits.keepalive_timeout_s
