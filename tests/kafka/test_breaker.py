"""The circuit breaker with an injected clock (tests/kafka/test_producer.py drives it for real)."""

from __future__ import annotations

import pytest

from chat4all_workers.errors import CircuitOpenError
from chat4all_workers.kafka.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[BreakerState] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        "kafka",
        failure_threshold=3,
        cooldown_s=10.0,
        clock=clock,
        on_change=None if changes is None else changes.append,
    )


def state(b: CircuitBreaker) -> BreakerState:
    """The state, read fresh (mypy would keep `b.state` narrowed across the calls in between)."""
    return b.state


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.before_call()
        b.record_failure()


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b = breaker(Clock())

    fail(b, 2)
    assert state(b) is BreakerState.CLOSED
    fail(b, 1)

    assert state(b) is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        b.before_call()


def test_breaker_success_resets_the_consecutive_count() -> None:
    b = breaker(Clock())

    fail(b, 2)
    b.before_call()
    b.record_success()
    fail(b, 2)

    assert state(b) is BreakerState.CLOSED


def test_breaker_half_opens_after_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)

    clock.now += 9.9
    assert state(b) is BreakerState.OPEN
    clock.now += 0.1

    assert state(b) is BreakerState.HALF_OPEN


def test_breaker_lets_one_probe_at_a_time_when_half_open() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10

    b.before_call()

    with pytest.raises(CircuitOpenError):
        b.before_call()


def test_breaker_closes_on_probe_success() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10

    b.before_call()
    b.record_success()

    assert state(b) is BreakerState.CLOSED
    b.before_call()  # does not raise


def test_breaker_reopens_for_a_full_cooldown_on_probe_failure() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10

    fail(b, 1)
    clock.now += 9.9

    assert state(b) is BreakerState.OPEN
    assert b.stats().times_opened == 2


def test_breaker_frees_the_probe_slot_when_the_probe_is_abandoned() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    b.before_call()

    b.record_abandoned()

    b.before_call()  # a new probe may go


def test_breaker_counts_many_failures_at_once_and_closes_on_a_late_success() -> None:
    clock = Clock()
    b = breaker(clock)

    b.record_failure(count=40)  # 40 records unacknowledged in time, in one call
    opened = state(b)
    b.record_success()  # their acknowledgements came after all: Kafka answers

    assert (opened, state(b)) == (BreakerState.OPEN, BreakerState.CLOSED)


def test_breaker_reports_every_transition() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    b = breaker(clock, changes)

    fail(b, 3)
    clock.now += 10
    b.before_call()
    b.record_success()

    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
