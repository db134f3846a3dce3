"""The operations endpoints: /metrics, /healthz, /readyz, on one small aiohttp server."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web
from aioprometheus.renderer import render

from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.serving import serving

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    async def get_metrics(request: web.Request) -> web.Response:
        body, headers = render(metrics.registry, request.headers.getall("Accept", []))
        return web.Response(body=body, headers=headers)

    async def get_healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def get_readyz(_: web.Request) -> web.Response:
        ready, detail = await readiness()
        body = orjson.dumps({"ready": ready, **detail}, default=str)
        return web.Response(
            body=body, status=200 if ready else 503, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/readyz", get_readyz)
    return app


def serve_operations(
    metrics: Metrics, readiness: Readiness, *, sockets: Sequence[socket.socket]
) -> contextlib.AbstractAsyncContextManager[int]:
    """Serve the endpoints on the listening `sockets` (listening.py) for the duration of the
    block; yields the bound port."""
    return serving(build_app(metrics, readiness), sockets=sockets)
