"""backoff_delay_s: exponential ceilings, the cap, and full jitter below the ceiling
(backoff.py)."""

from __future__ import annotations

import random

import pytest

from chat4all_workers.backoff import backoff_delay_s


class TopOfRange(random.Random):
    """An rng that records each `uniform(a, b)` it is asked for and answers `b`."""

    def __init__(self) -> None:
        super().__init__(0)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b


def test_backoff_delay_first_retry_without_jitter_is_the_base() -> None:
    assert backoff_delay_s(0, base_s=0.25, cap_s=10.0, jitter=False) == 0.25


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 0.1), (1, 0.2), (4, 1.6), (5, 3.2), (6, 5.0), (7, 5.0)],
)
def test_backoff_delay_without_jitter_is_the_ceiling(attempt: int, ceiling: float) -> None:
    assert backoff_delay_s(attempt, base_s=0.1, cap_s=5.0, jitter=False) == pytest.approx(ceiling)


def test_backoff_delay_base_above_the_cap_is_capped_from_the_first_retry() -> None:
    assert backoff_delay_s(0, base_s=30.0, cap_s=2.0, jitter=False) == 2.0


@pytest.mark.parametrize("attempt", [62, 63, 1_000, 10**9])
def test_backoff_delay_huge_attempt_numbers_stay_at_the_cap(attempt: int) -> None:
    assert backoff_delay_s(attempt, base_s=0.5, cap_s=60.0, jitter=False) == 60.0


def test_backoff_delay_zero_cap_means_no_delay() -> None:
    assert backoff_delay_s(3, base_s=1.0, cap_s=0.0, jitter=False) == 0.0
    assert backoff_delay_s(3, base_s=1.0, cap_s=0.0, rng=random.Random(7)) == 0.0


def test_backoff_delay_jitter_draws_from_zero_to_the_ceiling() -> None:
    rng = TopOfRange()

    delays = [backoff_delay_s(n, base_s=0.5, cap_s=3.0, rng=rng) for n in range(4)]

    assert rng.ranges == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0)]
    assert delays == [0.5, 1.0, 2.0, 3.0]


def test_backoff_delay_jitter_follows_the_injected_rng() -> None:
    first = [backoff_delay_s(6, base_s=1.0, cap_s=30.0, rng=random.Random(42)) for _ in range(3)]
    expected = random.Random(42).uniform(0.0, 30.0)

    assert first == [expected] * 3


def test_backoff_delay_jitter_stays_within_bounds_over_many_draws() -> None:
    rng = random.Random(1)

    samples = [backoff_delay_s(2, base_s=1.0, cap_s=100.0, rng=rng) for _ in range(2000)]

    assert min(samples) >= 0.0
    assert max(samples) <= 4.0
    assert max(samples) > 3.9  # it spreads over the whole range
    assert min(samples) < 0.1
