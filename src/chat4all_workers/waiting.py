"""The one "wait for an event or a deadline" of the process.

Roles, engines and helpers wait for their `stopping` event, a wake-up or a state change, but
never longer than a delay: a backoff, the next probe, the next pass. Written out each time it
is four lines of `asyncio.timeout` and `contextlib.suppress`; with anyio's cancel scope it is
this one function (anyio scopes work on any asyncio task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio

# A pause of some seconds (a backoff, a slot of the pace) as the router's parts are given it:
# delivery/parts.py `handing_back` hands the record back instead once the process stops.
Wait = Callable[[float], Awaitable[None]]


async def wait_event(event: asyncio.Event, *, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` passed (None: no limit); whether it is set."""
    if not event.is_set():
        with anyio.move_on_after(timeout_s):
            await event.wait()
    return event.is_set()
