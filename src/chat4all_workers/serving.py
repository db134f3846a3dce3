"""The one way this process serves an aiohttp application and learns the port it got.

The operations endpoints (observability/http.py) and the channel simulators each serve an aiohttp
app on the listening sockets the process bound at start-up (listening.py), or on a host and port
(tests; 0: one the OS picks); `serving` yields the bound port (from the runner's public
`addresses`), and cleans the runner up on the way out, which finishes the requests under way
within `shutdown_timeout`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from chat4all_workers.listening import BACKLOG


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sockets: Sequence[socket.socket] = (),
    **runner_options: Any,
) -> AsyncIterator[int]:
    """Serve `app` for the duration of the block, on the listening `sockets` (listening.py: the
    process's ports, bound at start-up; closed at the end) or else on host:port; yields the
    bound port. `runner_options` go to aiohttp's AppRunner (shutdown_timeout, ...)."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        sites: list[web.BaseSite] = [
            web.SockSite(runner, sock, backlog=BACKLOG) for sock in sockets
        ]
        for site in sites or [web.TCPSite(runner, host, port, backlog=BACKLOG)]:
            await site.start()
        addresses = runner.addresses
        yield int(addresses[0][1]) if addresses else port
    finally:
        await runner.cleanup()
