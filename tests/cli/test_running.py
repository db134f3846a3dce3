"""`chat4all-workers run` in this process: it sets the collector for a long-running worker
(chat4all_workers/collector.py) before start-up, and freezes what start-up made."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator

import pytest

from chat4all_workers import collector
from chat4all_workers.cli.running import run
from harness.deployment import Deployment
from harness.waiting import eventually


@pytest.fixture
def restored_process(restored_collector: None) -> Iterator[None]:
    """The test process's collector, and no signal handler of `run` left on this loop."""
    yield
    loop = asyncio.get_event_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


@pytest.mark.stack
async def test_run_sets_the_collector_and_freezes_what_start_up_made(
    deployment: Deployment, restored_process: None
) -> None:
    gc.unfreeze()
    settings = deployment.settings(roles={"enabled": ["whatsapp_mock"]})
    running = asyncio.create_task(run(settings, argparse.Namespace()))
    await eventually(lambda: gc.get_freeze_count() > 0, timeout_s=30, message="start-up frozen")
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
    assert not running.done()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
