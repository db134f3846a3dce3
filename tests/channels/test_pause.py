"""AccountPause: held sends, probes on an injected clock, resume and close (channels/pause.py).

Time is the injected clock's: a test moves it and then asks for a turn. A waiter blocked in
`wait_turn` sleeps on a real-time timeout, so a move of the fake clock alone does not wake it; the
tests that need a waiter woken do it with an event of the pause itself, as the router would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from chat4all_workers.channels.pause import AccountPause, PauseChange
from chat4all_workers.errors import RetryableError
from harness.waiting import eventually

BASE_S = 10.0
CAP_S = 35.0
TURN_TIMEOUT_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


PauseFactory = Callable[..., AccountPause]


@pytest.fixture
def make_pause() -> Iterator[PauseFactory]:
    """`make_pause(clock, changes=[])` builds a whatsapp AccountPause on that clock; each is closed
    after the test, so no waiter outlives it."""
    made: list[AccountPause] = []

    def make(
        clock: Callable[[], float],
        changes: list[PauseChange] | None = None,
        *,
        probe_base_s: float = BASE_S,
        probe_cap_s: float = CAP_S,
    ) -> AccountPause:
        record = changes.append if changes is not None else (lambda change: None)
        pause = AccountPause(
            "whatsapp",
            probe_base_s=probe_base_s,
            probe_cap_s=probe_cap_s,
            on_change=record,
            clock=clock,
        )
        made.append(pause)
        return pause

    yield make
    for pause in made:
        pause.close()


async def settle() -> None:
    """Let every ready task run until it blocks (a few loop iterations, no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def immediate_turn(pause: AccountPause) -> bool | None:
    """What `wait_turn` answers without time passing: True (the probe), False (go on), or None
    when the send would have to wait (the waiter is cancelled again)."""
    waiter = asyncio.create_task(pause.wait_turn())
    await settle()
    if waiter.done():
        return waiter.result()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    return None


async def finish(waiter: asyncio.Task[bool]) -> bool:
    async with asyncio.timeout(TURN_TIMEOUT_S):
        return await waiter


async def delay_to_next_probe(pause: AccountPause, clock: FakeClock, *, step_s: float) -> float:
    """Move the clock by `step_s` until a send may probe; how far it moved (inf: never, within
    a thousand steps)."""
    for steps in range(1000):
        if await immediate_turn(pause) is True:
            return steps * step_s
        clock.advance(step_s)
    return float("inf")


async def wall_clock_passes(moment: datetime) -> None:
    """Wait (a few microseconds) until `datetime.now` is past `moment`."""
    await eventually(lambda: datetime.now(UTC) > moment, timeout_s=TURN_TIMEOUT_S, interval_s=0)


def since(pause: AccountPause) -> datetime:
    return datetime.fromisoformat(pause.stats()["since"])


async def test_channel_pause_lets_every_send_go_while_active(make_pause: PauseFactory) -> None:
    pause = make_pause(FakeClock())

    assert await immediate_turn(pause) is False
    assert pause.stats() | {"since": None} == {
        "state": "active",
        "reason": None,
        "since": None,
        "held": 0,
        "probes": 0,
    }


async def test_channel_pause_pause_holds_sends_and_reports_the_change(
    make_pause: PauseFactory,
) -> None:
    changes: list[PauseChange] = []
    pause = make_pause(FakeClock(), changes)

    pause.pause("HTTP 401 (190)", label="190", probe=False)

    assert await immediate_turn(pause) is None
    assert pause.paused
    assert changes == [PauseChange("whatsapp", True, "190")]
    assert (pause.stats()["state"], pause.stats()["reason"]) == ("paused", "HTTP 401 (190)")


async def test_channel_pause_a_second_account_error_keeps_the_first_pause(
    make_pause: PauseFactory,
) -> None:
    clock, changes = FakeClock(), list[PauseChange]()
    pause = make_pause(clock, changes)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S / 2)

    pause.pause("HTTP 403 (10)", label="10", probe=False)  # a call already under way
    clock.advance(BASE_S / 2)

    assert changes == [PauseChange("whatsapp", True, "190")]
    assert pause.reason == "HTTP 401 (190)"
    assert await immediate_turn(pause) is True  # the probe schedule did not move


async def test_channel_pause_probes_once_the_base_delay_passed(make_pause: PauseFactory) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S - 0.001)
    before = await immediate_turn(pause)
    clock.advance(0.001)

    probe = await immediate_turn(pause)

    assert before is None
    assert probe is True
    assert pause.stats()["probes"] == 1


async def test_channel_pause_sends_one_probe_at_a_time(make_pause: PauseFactory) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    assert await immediate_turn(pause) is True
    clock.advance(BASE_S * 100)

    second = await immediate_turn(pause)

    assert second is None
    assert pause.probes == 1


async def test_channel_pause_wakes_a_held_send_when_the_probe_delay_elapses(
    make_pause: PauseFactory,
) -> None:
    pause = make_pause(time.monotonic, probe_base_s=0.005, probe_cap_s=0.005)
    pause.pause("HTTP 401 (190)", label="190", probe=False)

    turn = await finish(asyncio.create_task(pause.wait_turn()))  # nothing else wakes it

    assert turn is True


async def test_channel_pause_failed_probe_doubles_the_delay(make_pause: PauseFactory) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    assert await immediate_turn(pause) is True

    pause.pause("HTTP 401 (463)", label="463", probe=True)
    clock.advance(2 * BASE_S - 0.001)
    early = await immediate_turn(pause)
    clock.advance(0.001)
    on_time = await immediate_turn(pause)

    assert (early, on_time) == (None, True)
    assert pause.reason == "HTTP 401 (463)"  # a probe's answer updates the reason


async def test_channel_pause_probe_delay_doubles_up_to_the_cap(make_pause: PauseFactory) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    delays: list[float] = []
    for _ in range(5):
        delays.append(await delay_to_next_probe(pause, clock, step_s=0.5))
        pause.pause("HTTP 401 (190)", label="190", probe=True)

    assert delays == [BASE_S, 2 * BASE_S, CAP_S, CAP_S, CAP_S]


async def test_channel_pause_cap_below_the_base_keeps_the_base_delay(
    make_pause: PauseFactory,
) -> None:
    clock = FakeClock()
    pause = make_pause(clock, probe_base_s=BASE_S, probe_cap_s=BASE_S / 4)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    assert await immediate_turn(pause) is True
    pause.pause("HTTP 401 (190)", label="190", probe=True)

    delay = await delay_to_next_probe(pause, clock, step_s=0.5)

    assert delay == BASE_S


async def test_channel_pause_inconclusive_probe_keeps_the_delay(make_pause: PauseFactory) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    assert await immediate_turn(pause) is True
    pause.pause("HTTP 401 (190)", label="190", probe=True)  # the delay is now 2 * BASE_S
    clock.advance(2 * BASE_S)
    assert await immediate_turn(pause) is True

    pause.probe_done()  # a 5xx: says nothing about the account
    clock.advance(2 * BASE_S - 0.001)
    early = await immediate_turn(pause)
    clock.advance(0.001)
    on_time = await immediate_turn(pause)

    assert (early, on_time) == (None, True)
    assert pause.paused


async def test_channel_pause_inconclusive_probe_lets_a_waiting_send_probe_later(
    make_pause: PauseFactory,
) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    assert await immediate_turn(pause) is True
    held = asyncio.create_task(pause.wait_turn())
    await settle()

    pause.probe_done()
    clock.advance(BASE_S)
    pause.pause("HTTP 401 (190)", label="190", probe=False)  # any event wakes the waiter

    assert await finish(held) is True
    assert pause.probes == 2


async def test_channel_pause_probe_done_without_a_probe_moves_nothing(
    make_pause: PauseFactory,
) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S - 1)

    pause.probe_done()  # a send that was not the probe
    clock.advance(1)

    assert await immediate_turn(pause) is True


async def test_channel_pause_resume_releases_every_held_send(make_pause: PauseFactory) -> None:
    clock, changes = FakeClock(), list[PauseChange]()
    pause = make_pause(clock, changes)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    held = [asyncio.create_task(pause.wait_turn()) for _ in range(3)]
    await settle()
    assert not any(waiter.done() for waiter in held)

    pause.resume()

    assert [await finish(waiter) for waiter in held] == [False, False, False]
    assert changes == [
        PauseChange("whatsapp", True, "190"),
        PauseChange("whatsapp", False, "190"),
    ]
    assert (pause.paused, pause.reason, pause.stats()["state"]) == (False, None, "active")


async def test_channel_pause_resume_while_active_reports_nothing(
    make_pause: PauseFactory,
) -> None:
    changes: list[PauseChange] = []
    pause = make_pause(FakeClock(), changes)

    pause.resume()

    assert changes == []
    assert await immediate_turn(pause) is False


async def test_channel_pause_pausing_again_after_resume_starts_from_the_base_delay(
    make_pause: PauseFactory,
) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    for _ in range(3):  # the delay grows to the cap
        clock.advance(CAP_S)
        assert await immediate_turn(pause) is True
        pause.pause("HTTP 401 (190)", label="190", probe=True)
    clock.advance(CAP_S)
    assert await immediate_turn(pause) is True
    pause.resume()

    pause.pause("HTTP 401 (190)", label="190", probe=False)
    probes_after_pause = pause.probes
    clock.advance(BASE_S)

    assert probes_after_pause == 0
    assert await immediate_turn(pause) is True


async def test_channel_pause_close_makes_held_sends_raise_retryable(
    make_pause: PauseFactory,
) -> None:
    pause = make_pause(FakeClock())
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    held = [asyncio.create_task(pause.wait_turn()) for _ in range(2)]
    await settle()

    pause.close()

    for waiter in held:
        with pytest.raises(RetryableError, match="stopping while the account is paused"):
            await finish(waiter)


async def test_channel_pause_close_refuses_a_new_send_while_paused(
    make_pause: PauseFactory,
) -> None:
    pause = make_pause(FakeClock())
    pause.pause("HTTP 401 (190)", label="190", probe=False)

    pause.close()

    with pytest.raises(RetryableError):
        await finish(asyncio.create_task(pause.wait_turn()))


async def test_channel_pause_close_while_active_lets_sends_go(make_pause: PauseFactory) -> None:
    pause = make_pause(FakeClock())

    pause.close()

    assert await immediate_turn(pause) is False


async def test_channel_pause_stats_since_moves_on_pause_and_resume_only(
    make_pause: PauseFactory,
) -> None:
    pause = make_pause(FakeClock())
    created = since(pause)
    await wall_clock_passes(created)

    pause.pause("HTTP 401 (190)", label="190", probe=False)
    paused = since(pause)
    await wall_clock_passes(paused)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    still_paused = since(pause)
    pause.resume()
    resumed = since(pause)

    assert created < paused == still_paused < resumed


async def test_channel_pause_stats_count_probes_and_the_held_sends(
    make_pause: PauseFactory,
) -> None:
    clock = FakeClock()
    pause = make_pause(clock)
    pause.pause("HTTP 401 (190)", label="190", probe=False)
    clock.advance(BASE_S)
    await immediate_turn(pause)
    pause.pause("HTTP 401 (190)", label="190", probe=True)
    clock.advance(2 * BASE_S)
    await immediate_turn(pause)

    pause.held = 7  # the router counts the sends it parks here

    assert pause.stats() | {"since": None} == {
        "state": "paused",
        "reason": "HTTP 401 (190)",
        "since": None,
        "held": 7,
        "probes": 2,
    }
