"""The whole pipeline, in one process and split across three, against the real stack:
outbox -> message_processing -> router -> channel mocks -> their signed webhooks -> webhooks
role -> message_status_updates -> status updater -> messages.status READ; and upload -> merge
request -> COMPLETED -> completion event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from miniopy_async.api import Minio

from harness.deployment import Deployment
from harness.pipeline import Sent
from harness.processes import workers_running
from harness.topics import read_topic
from harness.waiting import eventually
from tests.e2e.pipeline import (
    check_deliveries,
    file_status,
    insert_messages,
    mock_sent,
    statuses,
    upload_file,
)
from tests.roles.uploads import MIB

pytestmark = pytest.mark.stack

FAST: dict[str, dict[str, Any]] = {
    "mocks": {"delivered_after_ms": 50.0, "read_after_ms": 100.0},
    "outbox": {"poll_interval_ms": 200},
    "fallback": {"poll_interval_s": 0.5},
    "router": {"retry_base_s": 0.05, "retry_cap_s": 0.5},
}


async def run_flow(deployment: Deployment, s3: Minio) -> None:
    sent = await insert_messages(deployment, conversations=range(1, 6), per_conversation=6)
    upload_id = await upload_file(deployment, s3, [b"a" * 5 * MIB, b"b" * MIB])

    ids = [s.message_id for s in sent]

    async def all_read() -> bool:
        return set((await statuses(deployment, ids)).values()) == {"READ"}

    async def completed() -> bool:
        return await file_status(deployment, upload_id) == "COMPLETED"

    await eventually(all_read, timeout_s=90, interval_s=0.25, message="every message READ")
    await eventually(completed, timeout_s=60, interval_s=0.25, message="the file COMPLETED")
    await check_channels(deployment, sent)
    events = await read_topic(deployment.stack, deployment.topics["file_upload_completed"])
    (event,) = [orjson.loads(r.value) for r in events]
    assert event["upload_id"] == str(upload_id)
    assert event["file_size"] == 6 * MIB


async def check_channels(deployment: Deployment, sent: list[Sent]) -> None:
    for channel in ("whatsapp", "instagram"):
        accepted = await mock_sent(deployment, channel)
        duplicates, disordered = check_deliveries(sent, accepted)
        assert {a["text"] for a in accepted} == {s.content for s in sent}
        assert (duplicates, disordered) == (0, 0), channel


async def test_pipeline_in_one_process_reaches_read_and_completed(
    deployment: Deployment, s3_client: Minio, tmp_path: Path
) -> None:
    async with workers_running(deployment, tmp_path, ["all,whatsapp_mock,instagram_mock"], **FAST):
        await run_flow(deployment, s3_client)


async def test_pipeline_split_across_three_processes(
    deployment: Deployment, s3_client: Minio, tmp_path: Path
) -> None:
    groups = [
        "router,whatsapp_mock,instagram_mock",
        "outbox,status_updater,backfill,webhooks",
        "merge,gc",
    ]
    async with workers_running(deployment, tmp_path, groups, **FAST):
        await run_flow(deployment, s3_client)
