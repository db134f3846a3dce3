"""The circuit breaker with an injected clock, and its gauge through the real Producer."""

from __future__ import annotations

import pytest

from chat4all_workers.errors import CircuitOpenError, RetryableError
from chat4all_workers.kafka.breaker import BreakerState, CircuitBreaker
from chat4all_workers.kafka.producer import OutgoingRecord, Producer
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources
from tests.roles.durable_support import KafkaProxy
from tests.stack import KafkaTopicFactory, StackEndpoints
from tests.support import eventually, settings_for


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


def test_breaker_reports_every_transition() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    b = breaker(clock, changes)

    fail(b, 3)
    clock.now += 10
    b.before_call()
    b.record_success()

    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


@pytest.mark.stack
async def test_breaker_gauge_follows_the_producer_through_an_outage(
    stack: StackEndpoints, redis_prefix: str, kafka_topic: KafkaTopicFactory
) -> None:
    topic = await kafka_topic(partitions=1)
    proxy = KafkaProxy(stack.kafka_bootstrap)
    await proxy.start()
    settings = settings_for(
        stack,
        redis_prefix=redis_prefix,
        kafka={"bootstrap_servers": proxy.address, "request_timeout_ms": 2000},
        breaker={"failure_threshold": 1, "cooldown_s": 0.5, "call_timeout_s": 1.0},
    )
    metrics = Metrics()
    state = metrics.breaker_state
    record = OutgoingRecord(topic, b"{}")
    try:
        async with open_resources(settings, metrics, frozenset({Need.KAFKA})) as resources:
            producer = resources.kafka()
            await producer.send(record)
            assert state.get({"service": "kafka"}) == 0

            await proxy.stop()
            with pytest.raises(RetryableError):
                await producer.send(record)
            assert state.get({"service": "kafka"}) == 1
            with pytest.raises(CircuitOpenError):
                await producer.send(record)

            await proxy.start()
            await eventually(lambda: producer.breaker.state is BreakerState.HALF_OPEN)
            assert state.get({"service": "kafka"}) == 2
            await eventually(lambda: _sent(producer, record), timeout_s=20, message="recovery")
            assert state.get({"service": "kafka"}) == 0
    finally:
        await proxy.stop()


async def _sent(producer: Producer, record: OutgoingRecord) -> bool:
    try:
        await producer.send(record)
    except RetryableError:
        return False
    return True
