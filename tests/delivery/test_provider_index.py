"""Provider message id -> our message (delivery/provider_index.py), against real Redis:
remembered for its TTL (through the markers' auto-pipeline, or a pipeline of its own), looked up
in one MGET."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background
from chat4all_workers.delivery.provider_index import MessageRef, ProviderIndex
from harness.stack import StackEndpoints

pytestmark = [pytest.mark.stack, pytest.mark.timeout(30)]

TTL_S = 600
FIRST = MessageRef("7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11", 42)
SECOND = MessageRef("00000000-0000-4000-8000-000000000002", 2**63 - 1)


# Each test's client and its auto-pipeline (the process's one, in production: resources.py).
_PIPES: dict[int, AutoPipeline] = {}


@pytest.fixture
async def redis(stack: StackEndpoints, background: Background) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(stack.redis_url)
    _PIPES[id(client)] = AutoPipeline(client, spawn=background.spawn)
    try:
        yield client
    finally:
        _PIPES.pop(id(client)).close()
        await client.aclose()


def index(redis: aioredis.Redis, prefix: str, *, piped: bool) -> ProviderIndex:
    pipe = _PIPES[id(redis)] if piped else None
    return ProviderIndex(redis, key=lambda key: prefix + key, ttl_s=TTL_S, pipe=pipe)


@pytest.mark.parametrize("piped", [True, False], ids=["auto-pipeline", "own-pipeline"])
async def test_provider_index_finds_what_it_remembered(
    redis: aioredis.Redis, redis_prefix: str, piped: bool
) -> None:
    ids = index(redis, redis_prefix, piped=piped)

    await ids.remember("instagram", [("mid.1", FIRST), ("mid.2", SECOND)])

    assert await ids.lookup("instagram", ["mid.2", "mid.1"]) == {"mid.1": FIRST, "mid.2": SECOND}


@pytest.mark.parametrize("piped", [True, False], ids=["auto-pipeline", "own-pipeline"])
async def test_provider_index_remembers_for_its_ttl_under_the_prefix(
    redis: aioredis.Redis, redis_prefix: str, piped: bool
) -> None:
    ids = index(redis, redis_prefix, piped=piped)

    await ids.remember("instagram", [("mid.1", FIRST)])

    key = f"{redis_prefix}message:provider:instagram:mid.1"
    assert ids.key("instagram", "mid.1") == key
    assert 0 < await redis.ttl(key) <= TTL_S


async def test_provider_index_leaves_out_ids_it_does_not_know(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    ids = index(redis, redis_prefix, piped=True)
    await ids.remember("instagram", [("mid.1", FIRST)])

    found = await ids.lookup("instagram", ["mid.1", "mid.unknown"])

    assert found == {"mid.1": FIRST}


async def test_provider_index_keeps_channels_apart(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    ids = index(redis, redis_prefix, piped=True)
    await ids.remember("instagram", [("same-id", FIRST)])

    assert await ids.lookup("whatsapp", ["same-id"]) == {}


async def test_provider_index_ignores_a_value_that_is_not_ours(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    ids = index(redis, redis_prefix, piped=True)
    await redis.set(ids.key("instagram", "mid.odd"), b'{"message_id": "x"}', ex=TTL_S)

    assert await ids.lookup("instagram", ["mid.odd"]) == {}


async def test_provider_index_of_nothing_is_nothing(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    ids = index(redis, redis_prefix, piped=False)

    await ids.remember("instagram", [])

    assert await ids.lookup("instagram", []) == {}
    assert [key async for key in redis.scan_iter(match=f"{redis_prefix}*")] == []
