"""The pacing script against a real Redis: rate, pair burst, AIMD, one key shared by two pacers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from chat4all_workers.channels.pacing import Pacer, PaceSettings
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack

MakePacer = Callable[..., Pacer]


@pytest.fixture
async def make_pacer(stack: StackEndpoints, redis_prefix: str) -> AsyncIterator[MakePacer]:
    """`make_pacer(max_rate_per_s=..., ...)`: a Pacer on this test's key, each with its own
    Redis client (as another process would have)."""
    clients: list[aioredis.Redis] = []

    def make(
        *,
        max_rate_per_s: float = 0.0,
        pair_burst: int = 0,
        pair_interval_s: float = 0.0,
        recovery_s: float = 1000.0,
    ) -> Pacer:
        client = aioredis.from_url(stack.redis_url)
        clients.append(client)
        settings = PaceSettings(
            max_rate_per_s=max_rate_per_s,
            pair_burst=pair_burst,
            pair_interval_s=pair_interval_s,
            recovery_s=recovery_s,
        )
        return Pacer(client, account_key=f"{redis_prefix}pace:whatsapp:1000", settings=settings)

    yield make
    for client in clients:
        await client.aclose()


async def timed(pacer: Pacer, recipients: list[str]) -> list[float]:
    """When each acquire returned (seconds from the start), one after another."""
    started = time.monotonic()
    times = []
    for recipient in recipients:
        await pacer.acquire(recipient)
        times.append(time.monotonic() - started)
    return times


async def test_pacer_never_goes_faster_than_the_rate(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=100.0)

    times = await asyncio.gather(*(pacer.acquire(f"+{n}") for n in range(40)))
    started = time.monotonic()
    more = await timed(pacer, [f"+{n}" for n in range(10)])

    assert None not in times
    assert max(t or 0.0 for t in times) >= 39 / 100 - 0.01  # 40 slots 10 ms apart, one at once
    assert more[-1] >= 9 / 100 - 0.01
    assert time.monotonic() - started < 5  # and it does get there


async def test_two_pacers_share_one_account_rate(make_pacer: MakePacer) -> None:
    first, second = make_pacer(max_rate_per_s=100.0), make_pacer(max_rate_per_s=100.0)
    started = time.monotonic()

    await asyncio.gather(
        *(first.acquire(f"+a{n}") for n in range(30)),
        *(second.acquire(f"+b{n}") for n in range(30)),
    )

    assert time.monotonic() - started >= 59 / 100 - 0.01  # 60 slots of one rate, not two


async def test_pair_pacing_allows_a_burst_then_one_per_interval(make_pacer: MakePacer) -> None:
    pacer = make_pacer(pair_burst=5, pair_interval_s=0.3)

    times = await timed(pacer, ["+1"] * 6)

    # One below the provider's burst of 5 at once, then one per 0.3 s.
    assert times[3] < 0.2
    assert times[4] >= 0.3 - 0.01
    assert times[5] >= 0.6 - 0.01


async def test_a_pair_wait_holds_back_only_that_recipient(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=1000.0, pair_burst=2, pair_interval_s=1.0)
    await pacer.acquire("+slow")
    waiting = asyncio.ensure_future(pacer.acquire("+slow"))  # its pair: a second away

    started = time.monotonic()
    await timed(pacer, ["+other"] * 1 + [f"+{n}" for n in range(5)])
    others_s = time.monotonic() - started
    await waiting

    assert others_s < 0.5
    assert time.monotonic() - started >= 0.9


async def test_a_throttle_halves_the_rate_once_per_burst_of_answers(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=100.0)

    answers = await asyncio.gather(
        *(pacer.throttled("+1", pair=False, retry_after_s=None) for _ in range(50))
    )
    times = await timed(pacer, [f"+{n}" for n in range(11)])

    assert sum(a.decreased for a in answers) == 1  # fifty throttles answered together: one signal
    assert {a.rate_per_s for a in answers} == {50.0}
    assert times[-1] >= 10 / 50 - 0.01  # 11 sends at 50/s


async def test_a_throttle_after_the_debounce_halves_the_rate_again(make_pacer: MakePacer) -> None:
    slow_to_recover = make_pacer(max_rate_per_s=100.0, recovery_s=1000.0)
    first = await slow_to_recover.throttled("+1", pair=False, retry_after_s=None)
    await asyncio.sleep(1.1)  # past the debounce
    second = await slow_to_recover.throttled("+1", pair=False, retry_after_s=None)

    assert first.rate_per_s == 50.0
    assert second.rate_per_s == pytest.approx(25.0, abs=0.1)  # barely recovered: halved again


async def test_the_rate_climbs_back_to_the_maximum(make_pacer: MakePacer) -> None:
    quick = make_pacer(max_rate_per_s=100.0, recovery_s=0.5)
    first = await quick.throttled("+1", pair=False, retry_after_s=None)
    await asyncio.sleep(1.1)  # past the debounce, and twice the recovery time
    second = await quick.throttled("+1", pair=False, retry_after_s=None)

    assert (first.rate_per_s, second.rate_per_s) == (50.0, 50.0)  # back at 100, then halved


async def test_retry_after_holds_the_whole_account(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=1000.0)
    await pacer.throttled("+1", pair=False, retry_after_s=0.5)

    times = await timed(pacer, ["+2"])

    assert times[0] >= 0.5 - 0.01


async def test_a_pair_throttle_uses_up_only_that_pair(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=1000.0, pair_burst=45, pair_interval_s=0.5)
    answer = await pacer.throttled("+1", pair=True, retry_after_s=None)

    other = await timed(pacer, ["+2"])
    same = await timed(pacer, ["+1"])

    assert not answer.decreased  # the account's rate is untouched
    assert other[0] < 0.2
    assert same[0] >= 0.5 - 0.01


async def test_no_limit_means_no_redis_call() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0")  # nothing listens: any call would fail
    settings = PaceSettings(max_rate_per_s=0, pair_burst=0, pair_interval_s=0, recovery_s=30)
    pacer = Pacer(dead, account_key="pace:whatsapp:1", settings=settings)
    try:
        waited = await pacer.acquire("+1")
        throttle = await pacer.throttled("+1", pair=False, retry_after_s=None)
    finally:
        await dead.aclose()

    assert not pacer.enabled
    assert (waited, throttle.decreased) == (0.0, False)


async def test_waiters_no_longer_wanted_leave_the_queue_unbooked(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=10.0)
    paused = False
    queued = [
        asyncio.ensure_future(pacer.acquire(f"+{n}", wanted=lambda: not paused)) for n in range(30)
    ]
    await asyncio.sleep(0.3)  # a few booked; the rest queued, three seconds of slots behind
    paused = True

    started = time.monotonic()
    await pacer.acquire("+probe")  # the probe: it waits for no slot the queue would have taken
    probe_s = time.monotonic() - started
    results = await asyncio.gather(*queued)

    assert probe_s < 0.6
    assert results.count(None) >= 20  # left unbooked
