"""The one "wait for an event or a deadline" of the process.

Roles, engines and helpers wait for their `stopping` event, a wake-up or a state change, but
never longer than a delay: a backoff, the next probe, the next pass. Written out each time it
is four lines of `asyncio.timeout` and `contextlib.suppress`; with anyio's cancel scope it is
this one function (anyio scopes work on any asyncio task). `sweep` is the other wait of an
I/O engine: its deadlines, checked every so often while it has work, not at all while idle.
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


async def sweep(
    every_s: float,
    expire: Callable[[float], None],
    *,
    busy: Callable[[], bool],
    woken: asyncio.Event,
    done: Callable[[], bool] = lambda: False,
) -> None:
    """While `busy()`, every `every_s` `expire(now)` (the loop's time) what is past its deadline,
    so a deadline is met at most `every_s` late; while not, wait until `woken` is set again.
    Returns once `done()`."""
    loop = asyncio.get_running_loop()
    while not done():
        if not busy():
            woken.clear()
            await woken.wait()
            continue
        await asyncio.sleep(every_s)
        expire(loop.time())
