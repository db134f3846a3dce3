"""One Redis connection that carries pipelined commands: written back to back, answered in order.

Why: the auto-pipeline (autopipeline.py) sends thousands of tiny commands a second in batches.
Through a pooled redis-py connection, each batch paid a pool checkout and a timeout context, and
each reply a coroutine of redis-py's reader. Here a batch is one `transport.write`, and each
reply is handed to its caller's future as hiredis parses it, in `data_received`: no task and no
coroutine per reply (what that saved, measured: autopipeline.py).

The connection is opened as the client's own pool would open it (host and port, a Unix socket
or TLS, its user, password, database and client name, from the pool's `connection_kwargs`), and
redis-py still maps each error reply to its exception class (NOSCRIPT to NoScriptError, LOADING to
BusyLoadingError), so callers see what the client would have raised.

One deadline bounds every command: a command not answered `timeout_s` after it was written fails
the connection, and every caller still waiting gets redis-py's TimeoutError; a connection Redis
closes fails them with its ConnectionError. Either way the next batch opens a new connection:
a command that failed so may or may not have run, and callers treat both as an outage.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis._parsers import BaseParser
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection


class RedisLink(asyncio.Protocol):
    """The protocol of one connection; `open_link` makes one ready for commands."""

    def __init__(self, *, timeout_s: float, encoding: str | None, errors: str) -> None:
        self._timeout_s = timeout_s
        reader_kwargs: dict[str, Any] = {
            "protocolError": redis_errors.InvalidResponse,
            "replyError": BaseParser.parse_error,
        }
        if encoding is not None:
            reader_kwargs.update(encoding=encoding, errors=errors)
        self._reader = hiredis.Reader(**reader_kwargs)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        # Deadlines of written batches: (loop time, replies read once the batch is answered).
        self._deadlines: collections.deque[tuple[float, int]] = collections.deque()
        self._written = 0
        self._answered = 0
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._failure: redis_errors.RedisError | None = None

    @property
    def usable(self) -> bool:
        """Open, and not failed: it takes commands."""
        return self._transport is not None and self._failure is None

    def send(self, packed: bytes, replies: Sequence[asyncio.Future[Any]]) -> None:
        """Write commands already packed, one reply's future each, in order. Each future gets
        Redis's reply as hiredis reads it, its error reply as redis-py's exception for it, or
        the connection's failure."""
        if self._failure is not None or self._transport is None:
            failure = self._failure or redis_errors.ConnectionError("Redis connection not open")
            for reply in replies:
                if not reply.done():
                    reply.set_exception(failure)
            return
        self._transport.write(packed)
        self._waiting.extend(replies)
        self._written += len(replies)
        loop = asyncio.get_running_loop()
        self._deadlines.append((loop.time() + self._timeout_s, self._written))
        if self._timer is None:
            self._timer = loop.call_at(self._deadlines[0][0], self._check_deadlines)

    def close(self) -> None:
        """Close the connection; callers still waiting get a ConnectionError."""
        self._fail(redis_errors.ConnectionError("Redis connection closed"))

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's are not asyncio.Transport subclasses
        # (a host program may embed the workers in its uvloop loop).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                value = self._reader.gets()
            except redis_errors.InvalidResponse as exc:  # not Redis's protocol: out of step
                self._fail(exc)
                return
            if value is False:
                return
            if not waiting:  # a reply to nothing: the stream is out of step
                self._fail(redis_errors.InvalidResponse("a Redis reply no command asked for"))
                return
            reply = waiting.popleft()
            self._answered += 1
            if reply.done():  # its caller was cancelled; the command ran anyway
                continue
            if isinstance(value, Exception):  # an error reply, as redis-py would raise it
                reply.set_exception(value)
            else:
                reply.set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_errors.ConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))

    def _check_deadlines(self) -> None:
        self._timer = None
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] <= self._answered:
            deadlines.popleft()
        if not deadlines or self._failure is not None:
            return
        loop = asyncio.get_running_loop()
        due, _ = deadlines[0]
        if due <= loop.time():
            self._fail(redis_errors.TimeoutError(f"Redis did not answer in {self._timeout_s}s"))
        else:
            self._timer = loop.call_at(due, self._check_deadlines)

    def _fail(self, failure: redis_errors.RedisError) -> None:
        if self._failure is None:
            self._failure = failure
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(self._failure)
        self._deadlines.clear()


async def open_link(pool: aioredis.ConnectionPool, *, timeout_s: float) -> RedisLink:
    """A connection as `pool` would open it, authenticated and on its database; redis-py's
    ConnectionError when Redis cannot be reached, its error when the handshake is refused."""
    kwargs = pool.connection_kwargs
    loop = asyncio.get_running_loop()
    link = RedisLink(
        timeout_s=timeout_s,
        encoding=kwargs.get("encoding", "utf-8") if kwargs.get("decode_responses") else None,
        errors=kwargs.get("encoding_errors", "strict"),
    )
    connect_timeout = kwargs.get("socket_connect_timeout") or timeout_s
    try:
        async with asyncio.timeout(connect_timeout):
            if issubclass(pool.connection_class, UnixDomainSocketConnection):
                await loop.create_unix_connection(lambda: link, kwargs["path"])
            else:
                host, port = kwargs.get("host", "localhost"), int(kwargs.get("port", 6379))
                ssl = None
                if issubclass(pool.connection_class, SSLConnection):
                    ssl = pool.connection_class(**kwargs).ssl_context.get()
                await loop.create_connection(
                    lambda: link, host, port, ssl=ssl, server_hostname=host if ssl else None
                )
            await _handshake(link, loop, kwargs)
    except (OSError, TimeoutError) as exc:
        link.close()
        where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port')}"
        raise redis_errors.ConnectionError(f"Error connecting to Redis at {where}: {exc}") from exc
    except BaseException:
        link.close()
        raise
    return link


async def _handshake(
    link: RedisLink, loop: asyncio.AbstractEventLoop, kwargs: dict[str, Any]
) -> None:
    """AUTH, SELECT and CLIENT SETNAME as the URL asks, each reply read before commands go."""
    commands: list[tuple[Any, ...]] = []
    password, username = kwargs.get("password"), kwargs.get("username")
    if password:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    if int(kwargs.get("db") or 0):
        commands.append(("SELECT", int(kwargs["db"])))
    if kwargs.get("client_name"):
        commands.append(("CLIENT", "SETNAME", kwargs["client_name"]))
    if not commands:
        return
    replies = [loop.create_future() for _ in commands]
    link.send(b"".join(hiredis.pack_command(command) for command in commands), replies)
    # Every reply read (a refused AUTH makes the SELECT after it refused too), the first
    # refusal raised.
    for outcome in await asyncio.gather(*replies, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
