"""placeholder: being written in this session; replaced before commit."""

from __future__ import annotations

from chat4all_workers.resources import Need
from chat4all_workers.roles.base import RoleContext, RoleSpec


async def run(ctx: RoleContext) -> None:
    ctx.mark_ready()
    await ctx.stopping.wait()


ROLE = RoleSpec(name="router", description="(being written)", needs=frozenset({Need.REDIS}), run=run)
