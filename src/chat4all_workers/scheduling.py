"""Periodic roles: one pass at each time of a cron schedule, for as long as the process runs.

Kept apart from the supervisor (as arq keeps `cron.py` apart from `worker.py`): the supervisor
restarts and escalates whatever a child's coroutine does; this module only turns a one-pass
coroutine (`RoleSpec.run_once`) into a long-running one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from chat4all_workers.role import RoleContext, RoleReport, RunFn, outlast_outages
from chat4all_workers.schedule import Cron
from chat4all_workers.waiting import wait_event


async def run_on_schedule(
    ctx: RoleContext,
    one_pass: RunFn,
    cron: Cron,
    *,
    arm: Callable[[RoleContext], None] | None = None,
) -> None:
    """Wait for each scheduled time (UTC) and run `one_pass`; return once `ctx.stopping` is set.

    `arm` runs once the schedule is armed, before the first wait (what must exist from the
    start: gc's counter, so its series is there before the first pass). The role's report is
    the time of the next pass.
    A pass that meets an outage runs again once the service is back, not at the next scheduled
    time: a daily GC would otherwise skip a day.
    """
    next_pass = cron.next_after(datetime.now(UTC))
    ctx.report(lambda: RoleReport(state={"next_pass": next_pass.isoformat()}))
    if arm is not None:
        arm(ctx)
    ctx.mark_ready()
    while not ctx.stopping.is_set():
        now = datetime.now(UTC)
        next_pass = cron.next_after(now)
        wait_s = (next_pass - now).total_seconds()
        await wait_event(ctx.stopping, timeout_s=wait_s)
        if ctx.stopping.is_set():
            return
        await outlast_outages(ctx, partial(one_pass, ctx), what="the pass")
