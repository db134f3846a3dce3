"""Redis commands issued in the same event-loop iteration go out as one pipeline.

Why: the router issues two tiny commands per message (claim and mark the send). One at a time,
each pays a pool checkout, a timeout and a round trip: about 80 us of CPU here, a third of the
router's cost per message. Hundreds of messages are in flight at once, so their commands arrive
together; coalesced, the same command costs about 11 us, and one connection carries them all.

Each caller still gets its own reply (or its own error), in the order Redis ran the commands; a
pipeline is not a transaction, so one command's error does not affect the others.

The batch is written and read on a pooled connection directly, under ONE deadline, rather than
through redis-py's Pipeline, which arms a timer per reply and wraps the batch in its retry
machinery (an eighth of the router's CPU per message: 200 us became 175 in bench/router.py).
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
import contextlib
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.connection import PythonRespSerializer
from redis.typing import EncodableT

from chat4all_workers.background import Spawn
from chat4all_workers.batching import IterationBatcher

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
        """`spawn` owns the task each batch is sent in (background.py)."""
        self._redis = redis
        self._timeout_s = timeout_s
        self._batcher = IterationBatcher(self._send, spawn=spawn, max_batch=max_batch)
        self._pack = _Packer(redis.get_encoder().encode)  # type: ignore[no-untyped-call]

    async def execute(self, *args: EncodableT) -> Any:
        """Run one command (`"SET", key, value, "NX"`) with the others of this loop iteration."""
        return await self._enqueue(args)

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
                    rest.add_done_callback(_retrieved)
                raise
        return results

    def _enqueue(self, args: tuple[EncodableT, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._batcher.add((args, reply))
        return reply

    async def _send(self, batch: list[_Pending]) -> None:
        packed: list[bytes] = []
        sending: list[_Pending] = []
        for args, reply in batch:
            try:
                packed.append(self._pack(args))
            except redis_errors.DataError as exc:  # an argument Redis cannot take: its caller's
                reply.set_exception(exc)
            else:
                sending.append((args, reply))
        if not sending:
            return
        try:
            replies = await self._round_trip(b"".join(packed), [args for args, _ in sending])
        except asyncio.CancelledError:
            for _, reply in sending:
                reply.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: each caller gets it
            for _, reply in sending:
                if not reply.done():
                    reply.set_exception(exc)
            return
        for (_, reply), value in zip(sending, replies, strict=True):
            if reply.done():  # the caller was cancelled; the command ran anyway
                continue
            if isinstance(value, Exception):
                reply.set_exception(value)
            else:
                reply.set_result(value)

    async def _round_trip(self, packed: bytes, commands: list[tuple[EncodableT, ...]]) -> list[Any]:
        """Every command's reply (a ResponseError in its place for a refused one), as the
        client's own commands would return it (`SET` gives True, for instance)."""
        pool = self._redis.connection_pool
        # Untyped in redis-py; it returns the pool's connection class.
        connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._timeout_s):
                await connection.send_packed_command(packed, check_health=False)
                return [await self._reply(connection, command) for command in commands]
        except BaseException:
            # The connection is mid-exchange (a reply unread): never hand it out again.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)

    async def _reply(self, connection: AbstractConnection, command: tuple[EncodableT, ...]) -> Any:
        try:
            # math.inf: no timer per reply; the batch's one deadline bounds them all.
            raw = await connection.read_response(timeout=math.inf)
        except redis_errors.ResponseError as exc:
            return exc
        name = command[0]
        callback = self._redis.response_callbacks.get(
            name.decode() if isinstance(name, bytes) else str(name)
        )
        return callback(raw) if callback is not None else raw


def _retrieved(reply: asyncio.Future[Any]) -> None:
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
            with contextlib.suppress(TypeError):
                # hiredis's stub types the argument as a tuple of one item; it takes any length.
                packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
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
        (reply,) = await self.many([(keys, args)])
        if isinstance(reply, Exception):
            raise reply
        return reply

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
