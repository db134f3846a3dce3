"""The Locust file, run as operators run it (`locust -f ... --headless`), against a router and
the channel mocks: it must produce, see every record SENT, and report no failure."""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path

import pytest

from harness import REPO
from harness.deployment import Deployment
from harness.processes import workers_running

pytestmark = pytest.mark.stack

LOCUST_FILE = REPO / "tests" / "load" / "worker_load_test.py"


async def test_locust_file_drives_the_router_and_reports_no_failure(
    deployment: Deployment, tmp_path: Path
) -> None:
    # The mocks call the webhooks role back (DELIVERED, READ), as in production.
    groups = ["router", "whatsapp_mock,instagram_mock,webhooks"]
    async with workers_running(deployment, tmp_path, groups):
        env = {
            **deployment.environ(),
            "LOAD_RATE_PER_USER": "5",
            "LOAD_CONVERSATIONS": "20",
            "LOAD_TIMEOUT_S": "20",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUST_FILE),
            "--headless",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "6s",
            "--stop-timeout",
            "20",
            "--csv",
            str(tmp_path / "load"),
            "--only-summary",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    with (tmp_path / "load_stats.csv").open() as fh:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    pipeline = [r for (kind, _), r in rows.items() if kind == "pipeline"]
    kafka = [r for (kind, _), r in rows.items() if kind == "kafka"]
    assert pipeline, f"no pipeline request reported: {sorted(rows)}\n{text[-2000:]}"
    assert kafka, f"no kafka request reported: {sorted(rows)}\n{text[-2000:]}"
    for row in pipeline + kafka:
        assert int(row["Request Count"]) >= 20, row
        assert int(row["Failure Count"]) == 0, row
