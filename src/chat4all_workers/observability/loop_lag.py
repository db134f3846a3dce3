"""The event-loop lag watchdog: how late the loop wakes a timer.

Blocking code on the loop (a sync client, a CPU-bound parse) shows up here first, long before it
shows up as lag on a topic.
"""

from __future__ import annotations

import asyncio
import logging

from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


async def watch_loop_lag(
    metrics: Metrics, *, interval_s: float, warn_s: float, stopping: asyncio.Event
) -> None:
    """Sample every `interval_s` into `event_loop_lag_seconds`; warn above `warn_s`."""
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        expected = loop.time() + interval_s
        await wait_event(stopping, timeout_s=interval_s)
        lag = max(0.0, loop.time() - expected)
        metrics.loop_lag.set({}, lag)
        if lag > warn_s:
            log.warning("event loop ran %.2fs late: something blocks the loop", lag)
