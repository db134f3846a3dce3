"""The auto-pipeline against a real Redis: many callers, one round trip, each its own reply."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from chat4all_workers.autopipeline import AutoPipeline, _Packer
from chat4all_workers.background import Background
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack


class CountingPool(aioredis.ConnectionPool):
    """Counts checkouts: one per pipeline (or per plain command)."""

    checkouts = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        CountingPool.checkouts += 1
        return await super().get_connection(*args, **kwargs)


async def test_concurrent_commands_share_one_round_trip_and_keep_their_replies(
    stack: StackEndpoints, redis_prefix: str, background: Background
) -> None:
    pool = CountingPool.from_url(stack.redis_url)
    client = aioredis.Redis.from_pool(pool)
    pipe = AutoPipeline(client, spawn=background.spawn)
    try:
        await client.set(f"{redis_prefix}taken", "old")
        CountingPool.checkouts = 0
        keys = [f"{redis_prefix}k{i}" for i in range(200)]
        claims = await asyncio.gather(
            *(pipe.execute("SET", key, f"v{i}", "NX", "EX", 60) for i, key in enumerate(keys)),
            pipe.execute("SET", f"{redis_prefix}taken", "new", "NX", "EX", 60),
            pipe.execute("GET", f"{redis_prefix}taken"),
        )
        assert CountingPool.checkouts == 1
        assert claims[:200] == [True] * 200
        assert claims[200] is None  # NX refused: the key was there
        assert claims[201] == b"old"
        assert await client.mget(keys[:3]) == [b"v0", b"v1", b"v2"]
    finally:
        await client.aclose()


@pytest.fixture
async def piped(
    stack: StackEndpoints, background: Background
) -> AsyncIterator[tuple[aioredis.Redis, AutoPipeline]]:
    """A client of the stack's Redis and an auto-pipeline over it; the client closed after."""
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        yield client, AutoPipeline(client, spawn=background.spawn)
    finally:
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
    assert good is True
    assert isinstance(bad, redis_errors.ResponseError)
    assert "WRONGTYPE" in str(bad)


async def test_execute_many_rides_the_same_round_trip_with_each_reply_or_error_in_order(
    stack: StackEndpoints, redis_prefix: str, background: Background
) -> None:
    pool = CountingPool.from_url(stack.redis_url)
    client = aioredis.Redis.from_pool(pool)
    pipe = AutoPipeline(client, spawn=background.spawn)
    try:
        await client.rpush(f"{redis_prefix}list", "x")
        CountingPool.checkouts = 0
        alone, many = await asyncio.gather(
            pipe.execute("SET", f"{redis_prefix}a", "1"),
            pipe.execute_many(
                [
                    ("SET", f"{redis_prefix}b", "2"),
                    ("GET", f"{redis_prefix}list"),  # WRONGTYPE
                    ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
                    ("GET", f"{redis_prefix}b"),
                ]
            ),
        )
        assert CountingPool.checkouts == 1
    finally:
        await client.aclose()

    assert alone is True
    assert many[0] is True
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
    assert results[1] is True
    assert await client.get(f"{redis_prefix}k") == "é".encode()
    assert await pipe.execute("CONFIG GET", "maxmemory-policy") is not None
