"""Redis commands issued in the same event-loop iteration go out as one pipeline.

Why: the router issues two tiny commands per message (claim and mark the send). One at a time,
each pays a pool checkout, a timeout and a round trip: about 80 us of CPU here, a third of the
router's cost per message. Hundreds of messages are in flight at once, so their commands arrive
together; coalesced, the same command costs about 11 us, and one connection carries them all.

Each caller still gets its own reply (or its own error), in the order Redis ran the commands; a
pipeline is not a transaction, so one command's error does not affect the others. Blocking
commands (BLPOP and the like) do not belong here: every later reply waits behind them, and the
deadline below fails the connection under them.

The batch goes out as one write on the pipeline's own connection (redis_link.py), and each
reply reaches its caller as hiredis parses it, under one deadline for every command. Through
redis-py's Pipeline, a timer armed per reply and its retry machinery were an eighth of the
router's CPU per message; through a pooled connection's reader, a coroutine per reply and a
checkout per batch cost more than the I/O itself (bench/router.py, 2026-12-07, runs of both
ways alternating: the router's CPU per message went from 1.25 to 1.15 times that of a floor on
redis-py's Pipeline, nine runs each, and from 1.62 to 1.55 times that of a floor on this
pipeline, three each).
Replies are Redis's own, as hiredis reads them in RESP2 (`SET` gives b"OK", a refused
`SET NX` None), not reshaped by the client's response callbacks: those follow the protocol
redis-py negotiates, which changed to RESP3 by default in redis-py 8, and no caller here needs
them.
The batch is packed by hiredis in one call per command (`_Packer`): redis-py's own packing runs
each argument through its Python encoder first, 5 us a command against hiredis's 0.5, and was
6.7 % of the router's CPU (three commands a message).
A command with an argument Redis cannot take (None, a bool) fails its own caller
with redis-py's DataError, not the batch. Nothing is retried here: a failed batch fails each
caller with the error (a ConnectionError or TimeoutError: an outage, which callers wait out),
since a command may or may not have run.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.connection import PythonRespSerializer
from redis.typing import EncodableT

from chat4all_workers.background import Spawn
from chat4all_workers.batching import IterationBatcher
from chat4all_workers.redis_link import RedisLink, open_link

_Pending = tuple[tuple[EncodableT, ...], asyncio.Future[Any]]
# redis-py's: a larger argument is sent as a chunk of its own (here only on its packing path).
_BUFFER_CUTOFF = 6000


class AutoPipeline:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        spawn: Spawn,
        max_batch: int = 1000,
        timeout_s: float = 5.0,
    ) -> None:
        """`spawn` owns the task each batch is sent in (background.py). The commands go on a
        connection of the pipeline's own, opened as `redis`'s pool opens its connections;
        `close()` closes it."""
        self._redis = redis
        self._timeout_s = timeout_s
        self._batcher = IterationBatcher(self._send, spawn=spawn, max_batch=max_batch)
        self._pack = _Packer(redis.get_encoder().encode)  # type: ignore[no-untyped-call]
        self._link: RedisLink | None = None
        self._opening = asyncio.Lock()

    def execute(self, *args: EncodableT) -> asyncio.Future[Any]:
        """Run one command (`"SET", key, value, "NX"`) with the others of this loop iteration.
        Awaited: Redis's reply (`b"OK"`), or its error reply raised as redis-py's exception for
        it. A future, not a coroutine: one frame fewer to resume on every reply."""
        return self._enqueue(args)

    async def execute_many(self, commands: Sequence[tuple[EncodableT, ...]]) -> list[Any]:
        """Run several commands with the others of this loop iteration; each one's reply, or
        its ResponseError (a refused command), in order."""
        replies = [self._enqueue(command) for command in commands]
        results: list[Any] = []
        for reply in replies:
            try:
                results.append(await reply)
            except redis_errors.ResponseError as exc:
                results.append(exc)
            except BaseException:
                # The first failure speaks for the rest (a batch fails as one): theirs are
                # read too, or asyncio would log each as never retrieved.
                for rest in replies:
                    rest.add_done_callback(retrieved)
                raise
        return results

    def close(self) -> None:
        """Close the pipeline's connection (commands still unanswered fail with a
        ConnectionError); a later command opens a new one."""
        if self._link is not None:
            self._link.close()
            self._link = None

    def _enqueue(self, args: tuple[EncodableT, ...]) -> asyncio.Future[Any]:
        reply: asyncio.Future[Any] = self._batcher.future()
        self._batcher.add((args, reply))
        return reply

    async def _send(self, batch: list[_Pending]) -> None:
        packed: list[bytes] = []
        sending: list[asyncio.Future[Any]] = []
        for args, reply in batch:
            try:
                packed.append(self._pack(args))
            except redis_errors.DataError as exc:  # an argument Redis cannot take: its caller's
                reply.set_exception(exc)
            else:
                sending.append(reply)
        if not sending:
            return
        try:
            link = await self._connected()
        except asyncio.CancelledError:
            for reply in sending:
                reply.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: each caller gets it
            for reply in sending:
                if not reply.done():
                    reply.set_exception(exc)
            return
        link.send(b"".join(packed), sending)

    async def _connected(self) -> RedisLink:
        """The pipeline's connection, opened again once it failed (by one batch, if several
        find it so at once)."""
        link = self._link
        if link is not None and link.usable:
            return link
        async with self._opening:
            if self._link is None or not self._link.usable:
                self._link = await open_link(self._redis.connection_pool, timeout_s=self._timeout_s)
            return self._link


def retrieved(reply: asyncio.Future[Any]) -> None:
    """A reply's error read (as a done callback), so that asyncio does not log it as never
    retrieved when nobody awaits it."""
    if not reply.cancelled():
        reply.exception()


class _Packer:
    """A command in Redis's protocol, byte for byte what redis-py packs (str as UTF-8, int and
    float by their repr), by hiredis. A command whose name holds a space (`"CONFIG GET"`, which
    redis-py splits) or an argument hiredis does not take goes through redis-py's own packing,
    for its splitting and its error (DataError naming the type)."""

    def __init__(self, encode: Callable[[EncodableT], bytes]) -> None:
        """`encode`: the client's own argument encoder (`Redis.get_encoder().encode`)."""
        self._redis_py = PythonRespSerializer(_BUFFER_CUTOFF, encode)

    def __call__(self, command: tuple[EncodableT, ...]) -> bytes:
        name = command[0]
        if not _splits(name):
            # try/except, not contextlib.suppress: three commands a message pass here, and the
            # context manager's calls cost as much again as packing one (0.5 us).
            try:
                # hiredis's stub types the argument as a tuple of one item; it takes any length.
                packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
            except TypeError:
                pass
            else:
                return packed
        chunks: list[bytes] = self._redis_py.pack(*command)  # type: ignore[no-untyped-call]
        return b"".join(chunks)


def _splits(name: EncodableT) -> bool:
    """Whether redis-py splits this command name in words (`"CONFIG GET"`)."""
    if isinstance(name, str):
        return " " in name
    return isinstance(name, bytes) and b" " in name


class PipedScript:
    """A Lua script run by EVALSHA through an AutoPipeline, so that the calls of concurrent
    tasks share one round trip (1,000 leases given back at a shutdown deadline take one
    pipeline, not 1,000 round trips through a pool of 50 connections). The script is loaded
    once more when Redis answers NOSCRIPT (a new or flushed server): none of those calls ran."""

    def __init__(self, pipe: AutoPipeline, redis: aioredis.Redis, source: str) -> None:
        self._pipe = pipe
        self._redis = redis
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[EncodableT], args: Sequence[EncodableT] = ()) -> Any:
        """The script's reply; its error reply raised."""
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return await self._pipe.execute(*command)
        except redis_errors.NoScriptError:
            await self._redis.script_load(self._source)
            return await self._pipe.execute(*command)

    async def many(
        self, calls: Sequence[tuple[Sequence[EncodableT], Sequence[EncodableT]]]
    ) -> list[Any]:
        """Each call's reply, or its ResponseError, in order."""
        commands = [("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args in calls]
        found = await self._pipe.execute_many(commands)
        if any(isinstance(f, redis_errors.NoScriptError) for f in found):
            await self._redis.script_load(self._source)
            found = await self._pipe.execute_many(commands)
        return found
