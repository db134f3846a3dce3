"""The benchmarks still run, small, against the real stack: bench/pipeline.py for a few seconds at
a low rate, bench/router.py over a few hundred messages, bench/webhooks.py over a few hundred
statuses. Only correctness is checked (every message READ, or sent once and SENT, every status
acknowledged and produced once; nothing lost or dead-lettered); the timings they print are not, a
loaded CI machine must not fail a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from harness import REPO
from harness.stack import StackEndpoints

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]


def run_bench(
    script: str, args: list[str], stack: StackEndpoints
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        env={**os.environ, **stack.as_environ()},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )


def test_bench_pipeline_delivers_every_message_at_a_low_rate(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    args = ["--rate", "20", "--seconds", "3", "--baseline-rate", "5", "--baseline-seconds", "1"]
    args += ["--partitions", "4", "--conversations", "8", "--json", str(result)]
    run = run_bench("pipeline.py", args, stack)

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    counts = orjson.loads(result.read_bytes())
    assert [(p["name"], p["sent"]) for p in counts["phases"]] == [("baseline", 5), ("load", 60)]
    for phase in counts["phases"]:
        assert (phase["read"], phase["failed"], phase["lost"]) == (phase["sent"], 0, 0), phase
    assert (counts["dlq"], counts["not_read"]) == (0, 0)
    assert "RESULT: every message READ" in run.stdout


def test_bench_router_runs_every_phase_and_delivers_each_message_once(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    args = ["--messages", "300", "--rounds", "2", "--partitions", "3", "--conversations", "30"]
    args += ["--latency-ms", "5", "--baseline-seconds", "1", "--engine-floor"]
    args += ["--json", str(result)]
    run = run_bench("router.py", args, stack)

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    figures = orjson.loads(result.read_bytes())
    assert figures["problems"] == []
    for phase in ("a", "b"):  # two turns each: every turn sends all 300 once
        for name in ("router", "engine_floor"):
            got = figures[phase][name]
            assert (got["sent_messages"], got["provider_sends"]) == (600, 600), (name, got)
            assert (got["dlq"], got["restarts"]) == (0, 0), (name, got)
            assert got["rate"] > 0, figures[phase]
        assert figures[phase]["floor"] > 0, figures[phase]
    assert min(figures["a"]["bare"], figures["b"]["serial"]) > 0, figures
    assert "RESULT: every message sent once and SENT" in run.stdout


def test_bench_webhooks_acknowledges_and_produces_every_status_once(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    args = ["--webhooks", "300", "--rounds", "2", "--batch", "10", "--connections", "4,8"]
    args += ["--router-messages", "300", "--partitions", "3", "--json", str(result)]
    run = run_bench("webhooks.py", args, stack)

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    figures = orjson.loads(result.read_bytes())
    assert figures["problems"] == []
    for runs in ("runs", "floors"):  # the role's and the floor's, each phase, two turns each
        assert sorted(figures[runs]) == ["1@4", "1@8", "2@4"]
        for phase in figures[runs].values():
            assert (phase["records"], phase["distinct"]) == (600, 600), phase
            assert phase["turns"] == 2, phase
            assert min(phase["rate"], phase["cpu_us"]) > 0, phase
    assert figures["router"]["rate"] > 0
    # The standing targets, one status per POST at each N: each against the floor, and p99.
    standing = ("CPU per status / the floor's", "ack p99", "statuses/s / the floor's")
    printed = [target["what"] for target in figures["targets"]]
    assert printed == [f"({label}) {what}" for label in ("1@4", "1@8") for what in standing]
    assert "RESULT: every status acknowledged 200 and produced once" in run.stdout


def test_bench_router_paced_phase_delivers_each_message_once_in_order(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    result = tmp_path / "result.json"
    args = ["--phase", "paced", "--paced-messages", "300", "--paced-conversations", "30"]
    args += ["--paced-rate", "150", "--routers", "2", "--partitions", "3", "--json", str(result)]
    run = run_bench("router.py", args, stack)

    assert "(paced) routers and mocks CPU per message" in run.stdout, f"{run.stdout}\n{run.stderr}"
    rows = {r["label"]: r for r in orjson.loads(result.read_bytes())["rows"]}
    # Correctness only; the rate and the throttled share are timings a loaded machine may miss.
    for label in (
        "messages SENT (unique, status topic)",
        "dead-lettered",
        "router restarts",
        "whatsapp: accepted by the mock (once each)",
        "whatsapp: conversations out of order",
    ):
        assert rows[label]["met"] is True, rows[label]
