"""The auto-pipeline against a real Redis: many callers, one round trip, each its own reply."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from chat4all_workers.autopipeline import AutoPipeline, PipedScript, _Packer
from chat4all_workers.background import Background
from chat4all_workers.redis_link import RedisLink
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands in each write to Redis (one write per round trip)."""
    counted: list[int] = []
    send = RedisLink.send

    def counting(link: RedisLink, packed: bytes, replies: Sequence[asyncio.Future[Any]]) -> None:
        counted.append(len(replies))
        send(link, packed, replies)

    monkeypatch.setattr(RedisLink, "send", counting)
    return counted


async def test_concurrent_commands_share_one_round_trip_and_keep_their_replies(
    piped: tuple[aioredis.Redis, AutoPipeline], redis_prefix: str, writes: list[int]
) -> None:
    client, pipe = piped
    await client.set(f"{redis_prefix}taken", "old")
    keys = [f"{redis_prefix}k{i}" for i in range(200)]
    claims = await asyncio.gather(
        *(pipe.execute("SET", key, f"v{i}", "NX", "EX", 60) for i, key in enumerate(keys)),
        pipe.execute("SET", f"{redis_prefix}taken", "new", "NX", "EX", 60),
        pipe.execute("GET", f"{redis_prefix}taken"),
    )
    assert writes == [202]
    assert claims[:200] == [b"OK"] * 200
    assert claims[200] is None  # NX refused: the key was there
    assert claims[201] == b"old"
    assert await client.mget(keys[:3]) == [b"v0", b"v1", b"v2"]


@pytest.fixture
async def piped(
    stack: StackEndpoints, background: Background
) -> AsyncIterator[tuple[aioredis.Redis, AutoPipeline]]:
    """A client of the stack's Redis and an auto-pipeline over it; the client closed after."""
    client = aioredis.Redis.from_url(stack.redis_url)
    pipe = AutoPipeline(client, spawn=background.spawn)
    try:
        yield client, pipe
    finally:
        pipe.close()
        await client.aclose()


async def test_one_failing_command_fails_only_its_caller(
    piped: tuple[aioredis.Redis, AutoPipeline], redis_prefix: str
) -> None:
    client, pipe = piped
    await client.rpush(f"{redis_prefix}list", "x")
    results: tuple[Any, ...] = await asyncio.gather(
        pipe.execute("SET", f"{redis_prefix}fine", "1"),
        pipe.execute("GET", f"{redis_prefix}list"),  # WRONGTYPE
        return_exceptions=True,
    )
    good, bad = results
    assert good == b"OK"
    assert isinstance(bad, redis_errors.ResponseError)
    assert "WRONGTYPE" in str(bad)


async def test_execute_many_rides_the_same_round_trip_with_each_reply_or_error_in_order(
    piped: tuple[aioredis.Redis, AutoPipeline], redis_prefix: str, writes: list[int]
) -> None:
    client, pipe = piped
    await client.rpush(f"{redis_prefix}list", "x")
    # Both in this loop iteration: the task's first step runs before the batch is flushed.
    many_task = asyncio.ensure_future(
        pipe.execute_many(
            [
                ("SET", f"{redis_prefix}b", "2"),
                ("GET", f"{redis_prefix}list"),  # WRONGTYPE
                ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
                ("GET", f"{redis_prefix}b"),
            ]
        )
    )
    alone = await pipe.execute("SET", f"{redis_prefix}a", "1")
    many = await many_task

    assert writes == [5]
    assert alone == b"OK"
    assert many[0] == b"OK"
    assert isinstance(many[1], redis_errors.ResponseError)
    assert isinstance(many[2], redis_errors.NoScriptError)
    assert many[3] == b"2"


async def test_an_unreachable_redis_reaches_every_caller_as_a_connection_error(
    background: Background,
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    pipe = AutoPipeline(client, spawn=background.spawn)
    try:
        results = await asyncio.gather(
            *(pipe.execute("SET", f"k{i}", "v") for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, redis_errors.ConnectionError) for r in results), results
    finally:
        pipe.close()
        await client.aclose()


async def test_execute_many_raises_an_outage_once_and_leaves_no_error_unread(
    background: Background, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    pipe = AutoPipeline(client, spawn=background.spawn)
    raised: type[BaseException] | None = None
    try:
        try:
            await pipe.execute_many([("SET", f"k{i}", "v") for i in range(5)])
        except redis_errors.ConnectionError as exc:
            raised = type(exc)  # not the exception: its traceback would keep the futures alive
    finally:
        pipe.close()
        await client.aclose()
    gc.collect()  # an unread future's error is logged when it is collected

    assert raised is redis_errors.ConnectionError
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "k", "v", "NX", "EX", 86_400),
        ("EVALSHA", "ab" * 20, 1, "chat4all:message:dedup:ü", b"\xff\x00", 1.5, 0.1, 1e20, -3),
        (b"GET", b"k"),
        ("CONFIG GET", "maxmemory-policy"),  # a name redis-py splits in two
        ("SET", "k", memoryview(b"v")),  # an argument hiredis does not take
    ],
)
def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them(
    command: tuple[Any, ...],
) -> None:
    client = aioredis.Redis()
    packed = _Packer(client.get_encoder().encode)(command)
    assert packed == b"".join(aioredis.Connection().pack_command(*command))


async def test_an_argument_of_no_redis_type_fails_only_its_caller_with_redis_pys_error(
    piped: tuple[aioredis.Redis, AutoPipeline], redis_prefix: str
) -> None:
    client, pipe = piped
    refused = pipe.execute("SET", f"{redis_prefix}k", None)  # type: ignore[arg-type]
    taken = pipe.execute("SET", f"{redis_prefix}k", "é", "EX", 60)  # the same loop iteration
    results = await asyncio.gather(refused, taken, return_exceptions=True)
    assert isinstance(results[0], redis_errors.DataError)
    assert "NoneType" in str(results[0])
    assert results[1] == b"OK"
    assert await client.get(f"{redis_prefix}k") == "é".encode()
    assert await pipe.execute("CONFIG GET", "maxmemory-policy") is not None


@pytest.mark.parametrize("how", ["one call", "many"])
async def test_a_script_redis_does_not_know_is_loaded_and_run_once(
    piped: tuple[aioredis.Redis, AutoPipeline], redis_prefix: str, writes: list[int], how: str
) -> None:
    client, pipe = piped
    # A source no server has seen: its first EVALSHA is refused NOSCRIPT.
    source = f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])"
    script = PipedScript(pipe, client, source)
    key = f"{redis_prefix}counter"
    if how == "one call":
        replies = [await script(keys=[key])]
    else:
        replies = await script.many([([key], []), ([key], [])])

    assert replies == ([1] if how == "one call" else [1, 2])
    assert await client.get(key) == str(len(replies)).encode()  # each call ran once
    assert len(writes) == 2  # refused, then run after SCRIPT LOAD
