"""The dedup markers' rules, against real Redis: claims, give-ups, the provider's word."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background
from chat4all_workers.delivery.markers import (
    Kind,
    ProviderVerdicts,
    SendMarkers,
    State,
    marker_key,
    read_marker,
)
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack

TTL_S = 600
RECORD = "message_processing:3:120"  # the record a claim is made for
REPLAY = "message_processing:1:900"  # another record of the same message (a DLQ replay)


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


@pytest.fixture
def key(redis_prefix: str) -> str:
    return redis_prefix + marker_key("00000000-0000-4000-8000-000000000001", "whatsapp")


def markers(redis: aioredis.Redis, *, lease_s: float = 30.0) -> SendMarkers:
    return SendMarkers(redis, _PIPES[id(redis)], ttl_s=TTL_S, lease_s=lease_s)


async def test_claim_is_ours_once_and_busy_for_another_worker(
    redis: aioredis.Redis, key: str
) -> None:
    first = await markers(redis).claim(key, RECORD)
    second = await markers(redis).claim(key, RECORD)

    assert first.state is State.CLAIMED
    assert second.state is State.BUSY
    assert 0 < second.retry_after_s <= 30
    assert 0 < await redis.ttl(key) <= TTL_S


async def test_claim_of_an_expired_lease_is_orphaned_and_an_abandoned_one_at_once(
    redis: aioredis.Redis, key: str
) -> None:
    short = markers(redis, lease_s=0.0)
    await short.claim(key, RECORD)
    orphaned = await markers(redis).claim(key, RECORD)
    await markers(redis).abandon(key, orphaned.lease)
    again = await markers(redis).claim(key, RECORD)

    assert orphaned.state is State.ORPHANED
    assert again.state is State.ORPHANED  # abandoned: expired now, not at its deadline


async def test_given_up_marker_stops_a_redelivery_and_yields_to_a_replay(
    redis: aioredis.Redis, key: str
) -> None:
    claim = await markers(redis).claim(key, RECORD)
    given_up = await markers(redis).give_up(
        key, claim.lease, error_type="retries_exhausted", origin=RECORD
    )
    redelivered = await markers(redis).claim(key, RECORD)
    peeked = await markers(redis).peek(key, RECORD)
    replayed = await markers(redis).claim(key, REPLAY)

    assert given_up.kind is Kind.FAILED
    assert given_up.value == f"failed:retries_exhausted:{RECORD}"
    assert (redelivered.state, redelivered.error_type) == (State.GIVEN_UP, "retries_exhausted")
    assert peeked is not None
    assert peeked.state is State.GIVEN_UP
    assert replayed.state is State.CLAIMED  # a fresh claim: the replay sends


async def test_give_up_never_overwrites_the_providers_word(redis: aioredis.Redis, key: str) -> None:
    claim = await markers(redis).claim(key, RECORD)
    await ProviderVerdicts(redis, _PIPES[id(redis)], ttl_s=TTL_S).record([(key, "wamid.X")])
    after = await markers(redis).give_up(
        key, claim.lease, error_type="delivery_unknown", origin=RECORD
    )

    assert (after.kind, after.provider_message_id) == (Kind.SENT, "wamid.X")
    assert await redis.get(key) == b"sent:wamid.X"


async def test_provider_verdicts_settle_every_marker_but_a_sent_one(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    keys = {name: f"{redis_prefix}{name}" for name in ("lease", "failed", "sent", "other")}
    await markers(redis).claim(keys["lease"], RECORD)
    await redis.set(keys["failed"], f"failed:provider_rejected:{RECORD}", ex=TTL_S)
    await redis.set(keys["sent"], "sent:wamid.FIRST", ex=TTL_S)
    await redis.set(keys["other"], "1")  # the original router's flag, without a TTL
    absent = f"{redis_prefix}absent"
    entries = [(k, f"wamid.{n}") for n, k in keys.items()] + [(absent, "wamid.absent")]

    found = await ProviderVerdicts(redis, _PIPES[id(redis)], ttl_s=TTL_S).record(entries)
    values = {n: await redis.get(k) for n, k in [*keys.items(), ("absent", absent)]}

    assert found == ["lease", "failed", "sent", "other", "absent"]
    assert values == {
        "lease": b"sent:wamid.lease",
        "failed": b"sent:wamid.failed",
        "sent": b"sent:wamid.FIRST",  # never replaced
        "other": b"sent:wamid.other",
        "absent": b"sent:wamid.absent",
    }
    for name in ("lease", "other", "absent"):  # the TTL kept, or given where there was none
        assert 0 < await redis.ttl(keys.get(name, absent)) <= TTL_S


async def test_a_marker_this_code_did_not_write_reads_as_sent(
    redis: aioredis.Redis, key: str
) -> None:
    await redis.set(key, "1", ex=TTL_S)  # what the original router left

    claim = await markers(redis).claim(key, RECORD)

    assert (claim.state, claim.foreign, claim.provider_message_id) == (State.SENT, True, "")


def test_read_marker_reads_each_kind_of_value() -> None:
    assert read_marker(None).kind is Kind.ABSENT
    assert read_marker(b"sent:wamid.X").provider_message_id == "wamid.X"
    assert read_marker(b"lease:abc1:1764000000.250").deadline == 1764000000.25
    assert read_marker(b"lease:abc1:garbled").deadline == 0.0  # unreadable: expired
    failed = read_marker(f"failed:provider_rejected:{RECORD}".encode())
    assert (failed.kind, failed.error_type, failed.origin) == (
        Kind.FAILED,
        "provider_rejected",
        RECORD,
    )
    assert read_marker(b"1").kind is Kind.FOREIGN


async def test_release_deletes_only_the_lease_it_holds(redis: aioredis.Redis, key: str) -> None:
    claim = await markers(redis).claim(key, RECORD)
    await markers(redis).release(key, "lease:someone-else:9999999999.000")
    kept = await redis.get(key)

    await markers(redis).release(key, claim.lease)

    assert kept == claim.lease.encode()
    assert await redis.get(key) is None


async def test_renew_is_refused_once_the_lease_is_not_ours(redis: aioredis.Redis, key: str) -> None:
    claim = await markers(redis).claim(key, RECORD)
    renewed = await markers(redis).renew(key, claim.lease)
    assert renewed is not None
    await ProviderVerdicts(redis, _PIPES[id(redis)], ttl_s=TTL_S).record([(key, "wamid.X")])

    refused = await markers(redis).renew(key, renewed)

    assert refused is None
    assert await redis.get(key) == b"sent:wamid.X"


async def test_peek_is_none_for_a_free_send_and_busy_for_another_workers_live_lease(
    redis: aioredis.Redis, key: str
) -> None:
    free = await markers(redis).peek(key, RECORD)
    await markers(redis).claim(key, RECORD)

    busy = await markers(redis).peek(key, RECORD)

    assert free is None
    assert busy is not None
    assert busy.state is State.BUSY
    assert 0 < busy.retry_after_s <= 30.0005  # the lease's deadline is written to the ms
