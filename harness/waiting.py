"""Waiting on a condition with a deadline, never a blind sleep (STYLE.md, Tests): what a test
asserts and what the harness waits for (a worker answering /readyz) both end in a clear failure
naming the condition, not a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    message: str = "condition",
) -> None:
    """Wait until `check()` is true, or fail with `message` after `timeout_s` (no blind sleeps)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)
