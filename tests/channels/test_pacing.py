"""The pacing script against a real Redis: rate, pair burst, AIMD (and throttles that are not the
rate), one key shared by two pacers, an account's slow-media pace beside its own."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from chat4all_workers.channels.pacing import Pacer, PaceSettings, Throttle, media_key
from harness.stack import StackEndpoints

pytestmark = pytest.mark.stack

MakePacer = Callable[..., Pacer]


@pytest.fixture
async def make_pacer(stack: StackEndpoints, redis_prefix: str) -> AsyncIterator[MakePacer]:
    """`make_pacer(max_rate_per_s=..., ...)`: a Pacer on this test's key (`media=True`: on its
    slow-media key), each with its own Redis client (as another process would have)."""
    clients: list[aioredis.Redis] = []

    def make(
        *,
        max_rate_per_s: float = 0.0,
        pair_burst: int = 0,
        pair_interval_s: float = 0.0,
        recovery_s: float = 1000.0,
        debounce_s: float = 1.0,
        media: bool = False,
    ) -> Pacer:
        client = aioredis.from_url(stack.redis_url)
        clients.append(client)
        settings = PaceSettings(
            max_rate_per_s=max_rate_per_s,
            pair_burst=pair_burst,
            pair_interval_s=pair_interval_s,
            recovery_s=recovery_s,
        )
        key = f"{redis_prefix}pace:whatsapp:1000"
        return Pacer(
            client,
            account_key=media_key(key) if media else key,
            settings=settings,
            debounce_s=debounce_s,
        )

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


Provider = Callable[[int, float], bool]


@dataclass
class Run:
    """What `drive` saw: each throttled answer's effect, and the rate at the end."""

    calls: int
    answers: list[Throttle]

    @property
    def decreases(self) -> list[Throttle]:
        return [a for a in self.answers if a.decreased]


async def drive(
    pacer: Pacer, *, throttles: Provider, seconds: float = math.inf, calls: int | None = None
) -> Run:
    """One sender at the pacer's pace for `seconds`, or for `calls` calls: after each slot,
    `throttles(call, t)` says whether the provider throttled that call (t: seconds since the
    start), and a throttled answer goes back to the pacer at once. A run by calls makes the same
    calls however slow the machine is: a run by time makes fewer on a busy one."""
    started = time.monotonic()
    made = 0
    answers: list[Throttle] = []
    while time.monotonic() - started < seconds and (calls is None or made < calls):
        await pacer.acquire(f"+{made}")
        made += 1
        if throttles(made, time.monotonic() - started):
            answers.append(await pacer.throttled("+1", pair=False, retry_after_s=None))
    return Run(made, answers)


def every(n: int) -> Provider:
    """A provider that throttles one call in n, whatever the rate."""
    return lambda call, _t: call % n == 0


class Limit:
    """A provider that throttles whatever goes faster than `rate_per_s` (a GCRA with a tenth
    of a second's burst), as a real account limit does."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval_s = 1 / rate_per_s
        self._tolerance_s = 0.1
        self._tat = 0.0

    def __call__(self, _call: int, t: float) -> bool:
        tat = max(self._tat, t)
        if tat - self._tolerance_s > t:
            return True
        self._tat = tat + self._interval_s
        return False


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
    # Every answer sees the halved rate (climbing back from it by 100/2/30 per second since).
    assert all(a.rate_per_s == pytest.approx(50.0, abs=0.5) for a in answers)
    assert times[-1] >= 10 / 51 - 0.01  # 11 sends at about 50/s


async def test_a_share_the_halving_lowered_halves_the_rate_again(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=400.0, debounce_s=0.0)
    # By calls, not by time: at least 20 calls must be counted since a decrease before a share
    # is weighed, and a busy machine made fewer than that in the time once given (a CI run).
    await drive(pacer, calls=20, throttles=lambda _c, _t: False)
    first = await pacer.throttled("+1", pair=False, retry_after_s=None)  # the first: halves
    half = await drive(pacer, calls=30, throttles=lambda call, _t: call % 2 == 0)
    lowered = await drive(pacer, calls=25, throttles=lambda call, _t: call == 20)

    assert first.rate_per_s == 200.0
    assert [d.rate_per_s for d in half.decreases] == [pytest.approx(100.0, abs=0.1)]
    assert [d.rate_per_s for d in lowered.decreases] == [pytest.approx(50.0, abs=0.1)]


async def test_the_rate_climbs_back_to_the_maximum(make_pacer: MakePacer) -> None:
    quick = make_pacer(max_rate_per_s=100.0, recovery_s=0.5)
    first = await quick.throttled("+1", pair=False, retry_after_s=None)
    await asyncio.sleep(1.1)  # past the debounce, and twice the recovery time
    second = await quick.throttled("+1", pair=False, retry_after_s=None)

    assert (first.rate_per_s, second.rate_per_s) == (50.0, 50.0)  # back at 100, then halved


async def test_retry_after_holds_the_whole_account(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=1000.0)
    started = time.monotonic()  # before the hold begins: the throttled call's return takes time
    await pacer.throttled("+1", pair=False, retry_after_s=0.5)

    await timed(pacer, ["+2"])

    assert time.monotonic() - started >= 0.5 - 0.01


async def test_a_pair_throttle_uses_up_only_that_pair(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=1000.0, pair_burst=45, pair_interval_s=0.5)
    started = time.monotonic()  # before the pair is used up
    answer = await pacer.throttled("+1", pair=True, retry_after_s=None)

    other = await timed(pacer, ["+2"])
    await timed(pacer, ["+1"])

    assert not answer.decreased  # the account's rate is untouched
    assert other[0] < 0.2
    assert time.monotonic() - started >= 0.5 - 0.01


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


async def test_throttles_whatever_the_rate_hold_it_after_the_first_decrease(
    make_pacer: MakePacer,
) -> None:
    pacer = make_pacer(max_rate_per_s=400.0, debounce_s=0.05)

    # One call in five, whatever the rate: by calls, as many on a busy machine as on an idle one.
    run = await drive(pacer, calls=400, throttles=every(5))

    assert run.answers[0].decreased  # the first throttle halves: nothing to compare with yet
    assert len(run.decreases) == 1
    assert min(a.rate_per_s for a in run.answers) >= 400.0 / 2  # never walked down to 20/s
    assert sum(a.held for a in run.answers) >= 50  # the others held the rate


async def test_throttles_that_follow_the_rate_drive_it_down_as_before(
    make_pacer: MakePacer,
) -> None:
    pacer = make_pacer(max_rate_per_s=400.0, debounce_s=0.05)

    # The account's real limit. 2 s: 1 s was enough on an idle machine, not on a busy one (the
    # third decrease came later); under 60/s nothing more is throttled, so more time adds none.
    run = await drive(pacer, seconds=2.0, throttles=Limit(60.0))
    stats = await pacer.stats()
    late = await drive(pacer, seconds=0.5, throttles=Limit(60.0))

    assert [round(d.rate_per_s) for d in run.decreases] == [200, 100, 50]
    assert stats.rate_per_s <= 60.0
    assert len(late.answers) <= late.calls // 100  # at most 1 % throttled once down


async def test_throttles_that_come_back_with_the_rate_halve_it_each_time(
    make_pacer: MakePacer,
) -> None:
    # Rates a sender given a quarter of a core still reaches (it made 260 calls a second there):
    # under the 400/s and 250/s once used it never climbed past the limit again.
    pacer = make_pacer(max_rate_per_s=200.0, recovery_s=0.5, debounce_s=0.05)

    run = await drive(pacer, seconds=3.0, throttles=Limit(125.0))  # climbs back past it

    assert len(run.decreases) >= 3  # 200 -> 100, then each time the climb crosses 125/s
    assert sum(a.held for a in run.answers) <= len(run.decreases)
    assert len(run.answers) <= run.calls // 20  # at most 5 % throttled, as before


async def test_the_counts_restart_at_each_decrease(make_pacer: MakePacer) -> None:
    pacer = make_pacer(max_rate_per_s=400.0, debounce_s=0.0)
    await timed(pacer, [f"+{n}" for n in range(10)])
    first = await pacer.throttled("+1", pair=False, retry_after_s=None)
    after_first = await pacer.stats()
    await timed(pacer, [f"+{n}" for n in range(20)])
    held = []
    while (answer := await pacer.throttled("+1", pair=False, retry_after_s=None)).held:
        held.append(answer)
    counted = await pacer.stats()  # read after the decrease: the counts start again
    after_second = answer

    assert first.decreased
    assert (after_first.calls, after_first.throttled) == (0, 0)
    assert after_first.share_before == pytest.approx(1 / 10)  # 1 throttle in the 10 calls
    assert after_second.decreased
    assert len(held) >= 1  # held until the share stood out
    assert (counted.calls, counted.throttled) == (0, 0)
    assert counted.share_before == pytest.approx((len(held) + 1) / 20)


async def test_the_media_pace_is_independent_of_the_accounts(make_pacer: MakePacer) -> None:
    account = make_pacer(max_rate_per_s=1000.0)
    media = make_pacer(max_rate_per_s=10.0, media=True)

    started = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        for _ in range(5):
            tasks.create_task(media.acquire("+m"))
        await timed(account, [f"+{n}" for n in range(20)])  # while the media slots wait
        account_s = time.monotonic() - started
        throttle = await media.throttled("+m", pair=False, retry_after_s=None)
    media_s = time.monotonic() - started

    assert account_s < 0.2  # 20 slots of 1000/s, not of 10/s
    assert media_s >= 4 / 10 - 0.01  # 5 media slots at 10/s
    assert throttle.rate_per_s == 5.0  # the media pace halved...
    assert (await account.stats()).rate_per_s == 1000.0  # ...and the account's did not
