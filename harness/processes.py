"""`chat4all-workers run` as real OS processes against a Deployment: the production path, as
`make run` and a Kubernetes pod start it (signals, kill -9, several processes sharing groups), with
each process's JSON log in a file whose tail a failure shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from chat4all_workers.roles import resolve_roles
from chat4all_workers.roles.webhooks import ROLE as WEBHOOKS_ROLE
from harness.deployment import Deployment, free_port
from harness.waiting import eventually

WEBHOOKS = WEBHOOKS_ROLE.name


class WorkerProcess:
    """`chat4all-workers run` as a real OS process (for signals, kill -9 and multi-process tests).

    Its JSON log goes to a file; `ready()` waits for /readyz 200 and fails with the log's tail if
    the process exits first.
    """

    def __init__(self, roles: str, env: dict[str, str], log_path: Path) -> None:
        self.roles = roles
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.metrics_port = int(env.get("METRICS_PORT", "8000"))

    async def start(self) -> WorkerProcess:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CHAT4ALL_", "ROLES", "KAFKA_", "MINIO_", "OUTBOX_"))
        }
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chat4all_workers",
                "run",
                "--roles",
                self.roles,
                env={**base, **self.env},
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log.close()
        return self

    async def ready(self, timeout_s: float = 60.0) -> None:
        async def answers() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{self.metrics_port}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await eventually(answers, timeout_s=timeout_s, interval_s=0.2, message="worker ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def stop(self) -> None:
        """Teardown: SIGTERM, then SIGKILL if it does not go."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                records.append(orjson.loads(line))
        return records


@contextlib.asynccontextmanager
async def workers_running(
    deployment: Deployment, log_dir: Path, groups: Sequence[str], **overrides: dict[str, Any]
) -> AsyncIterator[list[WorkerProcess]]:
    """One `chat4all-workers run --roles <group>` process per group, each with its own
    operations port and `overrides` (settings sections); yields them once all answer /readyz,
    and stops them afterwards. The first process to run the webhooks role listens on the
    deployment's webhooks port, any other one on a port of its own."""
    procs: list[WorkerProcess] = []
    webhooks_bound = False
    try:
        for n, roles in enumerate(groups):
            binds = WEBHOOKS in {spec.name for spec in resolve_roles(roles.split(","))}
            if binds and webhooks_bound:
                webhooks = {**overrides.get("webhooks", {}), "port": free_port()}
                env = deployment.environ(**{**overrides, "webhooks": webhooks})
            else:
                env = deployment.environ(**overrides)
            webhooks_bound = webhooks_bound or binds
            if n:
                env["METRICS_PORT"] = str(free_port())
            procs.append(await WorkerProcess(roles, env, log_dir / f"worker-{n}.log").start())
        for proc in procs:
            await proc.ready()
        yield procs
    finally:
        for proc in procs:
            await proc.stop()


def deployment_running(
    deployment: Deployment, log_dir: Path, **overrides: dict[str, Any]
) -> contextlib.AbstractAsyncContextManager[list[WorkerProcess]]:
    """The production roles (`--roles all`) in one process, the channel mocks in another (so
    what the mocks saw survives anything done to the workers): yields [workers, mocks]."""
    return workers_running(
        deployment, log_dir, ["all", "whatsapp_mock,instagram_mock"], **overrides
    )
