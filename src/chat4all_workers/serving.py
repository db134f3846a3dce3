"""The one way this process serves an aiohttp application and learns the port it got.

The operations endpoints (observability/http.py), the webhooks role (intake/server.py) and the
channel simulators each serve an aiohttp app on a host and port (0: one the OS picks, for tests);
`serving` binds it, yields the bound port (from the runner's public `addresses`), and cleans the
runner up on the way out, which finishes the requests under way within `shutdown_timeout`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, *, host: str, port: int, backlog: int = 128, **runner_options: Any
) -> AsyncIterator[int]:
    """Serve `app` on host:port for the duration of the block; yields the bound port.
    `runner_options` go to aiohttp's AppRunner (shutdown_timeout, lingering_time, ...)."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=backlog)
        await site.start()
        addresses = runner.addresses
        yield int(addresses[0][1]) if addresses else port
    finally:
        await runner.cleanup()
