"""Helpers for tests of the package: settings pointed at the test's own isolated resources."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chat4all_workers.config import Settings
from tests.stack import StackEndpoints


def settings_for(
    stack: StackEndpoints,
    *,
    database_url: str | None = None,
    redis_prefix: str = "",
    bucket: str | None = None,
    consumer_group: str | None = None,
    topics: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> Settings:
    """Settings for one test: the stack's addresses, the test's database, key prefix, bucket,
    consumer group and topic names, plus any section overrides (`router={"max_attempts": 2}`).
    The environment is NOT read, so a developer's shell cannot change a test's outcome."""
    doc: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap, "session_timeout_ms": 6000},
        "postgres": {"url": database_url or stack.database_url},
        "redis": {"url": stack.redis_url, "key_prefix": redis_prefix},
        "s3": {
            "endpoint": stack.s3_endpoint,
            "access_key": stack.s3_access_key,
            "secret_key": stack.s3_secret_key,
            "secure": stack.s3_secure,
        },
        "observability": {"metrics_port": 0, "metrics_host": "127.0.0.1"},
        "supervisor": {"shutdown_timeout_s": 10.0},
    }
    if consumer_group:
        doc["kafka"]["consumer_group"] = consumer_group
    if bucket:
        doc["s3"]["bucket"] = bucket
    if topics:
        doc["topics"] = dict(topics)
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return Settings.load({}, doc)


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
