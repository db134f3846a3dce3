"""Periodic roles: one pass at each time of a cron schedule, for as long as the process runs.

Kept apart from the supervisor (as arq keeps `cron.py` apart from `worker.py`): the supervisor
restarts and escalates whatever a child's coroutine does; this module only turns a one-pass
coroutine (`RoleSpec.run_once`) into a long-running one.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from functools import partial

from chat4all_workers.roles.base import RoleContext, RunFn, outlast_outages
from chat4all_workers.schedule import Cron


async def run_on_schedule(ctx: RoleContext, one_pass: RunFn, cron: Cron) -> None:
    """Wait for each scheduled time (UTC) and run `one_pass`; return once `ctx.stopping` is set.

    A pass that meets an outage runs again once the service is back, not at the next scheduled
    time: a daily GC would otherwise skip a day.
    """
    ctx.mark_ready()
    while not ctx.stopping.is_set():
        now = datetime.now(UTC)
        wait_s = (cron.next_after(now) - now).total_seconds()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await ctx.stopping.wait()
        if ctx.stopping.is_set():
            return
        await outlast_outages(ctx, partial(one_pass, ctx), what="the pass")
