"""waiting.py: wait_event (an event, or a deadline, whichever comes first) and sweep (deadlines
checked every period while busy, none while idle)."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat4all_workers.waiting import sweep, wait_event

pytestmark = pytest.mark.timeout(10)


async def test_wait_event_returns_true_at_once_for_an_event_already_set() -> None:
    event = asyncio.Event()
    event.set()

    assert await wait_event(event, timeout_s=0.0) is True


async def test_wait_event_returns_false_once_the_timeout_passed() -> None:
    event = asyncio.Event()
    began = time.monotonic()

    set_ = await wait_event(event, timeout_s=0.05)

    assert set_ is False
    assert time.monotonic() - began >= 0.05


async def test_wait_event_returns_true_when_the_event_is_set_before_the_timeout() -> None:
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(event, timeout_s=60.0))

    event.set()

    assert await asyncio.wait_for(waiting, 5) is True


async def test_wait_event_without_a_timeout_waits_for_the_event() -> None:
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(event, timeout_s=None))
    await asyncio.sleep(0)  # one loop step: it is waiting now
    pending = not waiting.done()

    event.set()

    assert pending
    assert await asyncio.wait_for(waiting, 5) is True


async def test_wait_event_is_cancelled_like_any_wait() -> None:
    waiting = asyncio.ensure_future(wait_event(asyncio.Event(), timeout_s=60.0))
    await asyncio.sleep(0)

    waiting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_sweep_expires_while_busy_idles_until_woken_and_ends_once_done() -> None:
    woken = asyncio.Event()
    busy = False
    done = False
    expired: list[float] = []
    twice = asyncio.Event()

    def expire(now: float) -> None:
        expired.append(now)
        if len(expired) == 2:
            twice.set()

    sweeper = asyncio.ensure_future(
        sweep(0.01, expire, busy=lambda: busy, woken=woken, done=lambda: done)
    )

    await asyncio.sleep(0.05)
    assert expired == []  # idle: not a single check

    busy = True
    woken.set()
    await asyncio.wait_for(twice.wait(), 5)
    assert expired == sorted(expired)  # the loop's time at each check

    done = True
    await asyncio.wait_for(sweeper, 5)
