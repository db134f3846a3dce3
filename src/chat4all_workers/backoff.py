"""The one retry/backoff helper: exponential delays with full jitter, and a retry loop around it.

Full jitter (a uniform delay in [0, min(cap, base * 2**n)]) spreads retries of many workers that
failed together, so a recovering dependency is not hit by a synchronised wave.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from chat4all_workers.errors import RetryableError

T = TypeVar("T")


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """The delay before retry number `attempt` (0 for the first retry)."""
    ceiling = min(cap_s, base_s * float(1 << min(attempt, 62)))
    if not jitter:
        return ceiling
    return float((rng or random).uniform(0.0, ceiling))


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_s: float,
    cap_s: float,
    on_retry: Callable[[int, RetryableError, float], None] | None = None,
) -> T:
    """Await `call` up to `attempts` times, sleeping between tries while it raises RetryableError.

    A server's `retry_after_s` hint replaces the computed delay when it is longer. The last
    RetryableError propagates when every attempt failed; any other exception propagates at once.
    """
    for attempt in range(attempts):
        try:
            return await call()
        except RetryableError as exc:
            if attempt + 1 >= attempts:
                raise
            delay = backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s)
            if exc.retry_after_s is not None:
                delay = max(delay, min(exc.retry_after_s, cap_s))
            if on_retry is not None:
                on_retry(attempt + 1, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: attempts must be at least 1")
