"""Every command of the runbook table in docs/operations.md ("The original workers' commands, and
what runs here") runs, against a router that consumed and dead-lettered, and shows something.

The commands are read from the table, so a row added there is run here; the defaults they name
(topics, the router's group, the fallback key, the ops port) become this test's own names.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from chat4all_workers.config import TopicSettings
from harness import REPO
from harness.deployment import Deployment
from harness.processes import workers_running
from harness.topics import read_topic
from harness.waiting import eventually
from tests.support import committed_offsets, produce, router_record

OPERATIONS = REPO / "docs" / "operations.md"
TABLE = re.compile(r"<!-- runbook-commands: begin.*?-->\n(.*?)<!-- runbook-commands: end -->", re.S)


def runbook_commands() -> list[str]:
    """The second column's command of each row (code spans; `\\|` is a pipe)."""
    (table,) = TABLE.findall(OPERATIONS.read_text())
    commands = []
    for row in table.strip().splitlines()[2:]:
        cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
        spans = re.findall(r"`([^`]+)`", cells[1])
        assert spans, f"no command in {row!r}"
        commands.append(spans[0].replace("\\|", "|"))
    return commands


def localised(command: str, deployment: Deployment) -> str:
    """The command with this test's names for the defaults it mentions."""
    defaults = {getattr(TopicSettings(), f): f for f in deployment.topics}
    for default in sorted(defaults, key=len, reverse=True):
        topic = deployment.topics[defaults[default]]
        command = re.sub(rf"\b{re.escape(default)}\b", topic, command)
    command = command.replace("chat4all-workers-router", f"{deployment.group}-router")
    queue = "fallback:message_queue"
    command = command.replace(queue, f"{deployment.redis_prefix}{queue}")
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{deployment.metrics_port}")
    # This DLQ holds one record: the console consumer need not wait out its time-out for more.
    return command.replace("--max-messages 10", "--max-messages 1")


async def run(command: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-o", "pipefail", "-c", command, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def test_runbook_table_has_every_original_command() -> None:
    commands = runbook_commands()

    assert any("kafka-consumer-groups --describe --group" in c for c in commands)
    assert any("/metrics" in c for c in commands)
    tools = ("scripts/devstack ", "curl ", "redis-cli ", "psql ", "chat4all-workers ")
    assert all(c.startswith(tools) for c in commands)


@pytest.mark.stack
async def test_every_runbook_command_runs_against_the_stack(
    deployment: Deployment, tmp_path: Path
) -> None:
    topic, group = deployment.topics["message_processing"], f"{deployment.group}-router"
    await produce(
        deployment.stack,
        topic,
        [router_record(n, f"runbook {n}") for n in range(5)] + [(b"c:0", b"{no")],
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHAT4ALL_", "KAFKA_"))},
        **deployment.environ(),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    results: dict[str, tuple[int, str]] = {}
    commands = [localised(c, deployment) for c in runbook_commands()]
    # An offset reset needs the group without members: run it after the worker stopped.
    offline = [c for c in commands if "--reset-offsets" in c]
    async with workers_running(deployment, tmp_path, ["router,whatsapp_mock,instagram_mock"]):

        async def consumed() -> bool:
            committed = await committed_offsets(deployment.stack, topic, group)
            return set(committed.values()) != {-1}

        await eventually(consumed, timeout_s=30, message="the router committed")
        await eventually(
            lambda: _has_records(deployment), timeout_s=30, message="a dead-lettered record"
        )
        for command in commands:
            if command not in offline:
                results[command] = await run(command, env)
    for command in offline:
        results[command] = await run(command, env)

    failed = {c: out[-2000:] for c, (rc, out) in results.items() if rc != 0 or not out.strip()}
    assert failed == {}
    unnamed = [
        c
        for c, (_, out) in results.items()
        if any(name in c and name not in out for name in (topic, group))
    ]
    assert unnamed == []


async def _has_records(deployment: Deployment) -> bool:
    return bool(await read_topic(deployment.stack, deployment.topics["dlq"]))
