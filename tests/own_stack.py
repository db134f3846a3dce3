"""Services of a test's own: `scripts/devstack` in a temporary `DEVSTACK_HOME` on free ports
(tests/ports.py), never the session's shared stack.

Two users: the 3-node Kafka cluster of the tests that kill a broker (tests/cluster.py), and the
whole stack of the `faults` tests (tests/e2e/faults/), which stop and start Kafka, PostgreSQL,
Redis and S3 for real: on a stack of their own they run beside the rest of the suite instead of
alone after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from harness.stack import StackEndpoints
from tests.ports import free_port_block
from tests.stack import DEVSTACK

# devstack's port variables of the whole stack, in the order of the block picked for them. The
# SeaweedFS listeners also take their port + 10000 (gRPC).
STACK_PORTS = (
    "DEVSTACK_KAFKA_PORT",
    "DEVSTACK_KAFKA_CONTROLLER_PORT",
    "DEVSTACK_POSTGRES_PORT",
    "DEVSTACK_REDIS_PORT",
    "DEVSTACK_S3_PORT",
    "DEVSTACK_WEED_MASTER_PORT",
    "DEVSTACK_WEED_VOLUME_PORT",
    "DEVSTACK_WEED_FILER_PORT",
    "DEVSTACK_WEED_ADMIN_PORT",
)
GRPC_OFFSET = 10000
STACK_SERVICES = ("kafka", "postgres", "redis", "s3")


@dataclass(frozen=True)
class OwnStack:
    env: dict[str, str]  # the environment devstack runs in: DEVSTACK_* of this stack
    exported: dict[str, str]  # what `scripts/devstack env` printed

    @property
    def endpoints(self) -> StackEndpoints:
        return StackEndpoints.from_environ(self.exported)

    @property
    def bootstrap(self) -> str:
        return self.exported["KAFKA_BOOTSTRAP_SERVERS"]

    def devstack(self, *args: str, timeout_s: float = 300) -> str:
        result = subprocess.run(
            [str(DEVSTACK), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"devstack {shlex.join(args)}:\n{result.stderr}"
        return result.stdout

    async def adevstack(self, *args: str, timeout_s: float = 300) -> str:
        """`devstack` without blocking the test's event loop (a stream runs meanwhile)."""
        proc = await asyncio.create_subprocess_exec(
            str(DEVSTACK), *args, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        text = out.decode(errors="replace")
        failed = f"devstack {shlex.join(args)} could not act on the service:\n{text}"
        assert proc.returncode == 0, failed
        # A service found answering on the port is never stopped: it would not be ours.
        assert "not started by devstack" not in text, failed
        return text

    def read_env(self) -> Self:
        """The same stack with what `devstack env` prints for it."""
        exported = dict(
            shlex.split(line)[1].split("=", 1)
            for line in self.devstack("env").splitlines()
            if line.startswith("export ")
        )
        return dataclasses.replace(self, exported=exported)


def devstack_env(home: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    """The environment of a devstack in `home` on `ports`: the process's own, less anything that
    points at the shared stack (devstack's Kafka tools would go to KAFKA_BOOTSTRAP_SERVERS)."""
    shared = ("DEVSTACK_", "KAFKA_", "DATABASE_URL", "REDIS_URL", "MINIO_")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(shared)},
        "DEVSTACK_HOME": str(home),
        **{name: str(port) for name, port in ports.items()},
        **extra,
    }


@contextlib.contextmanager
def stack_running(*, keep: Callable[[], bool]) -> Iterator[OwnStack]:
    """Kafka, PostgreSQL, Redis and S3 up in a new home (about 5 s), stopped and removed
    afterwards; kept (and named on stderr) when `keep()` says so, e.g. after a failed test.

    The home is made under the system's temporary directory and opened to other users:
    PostgreSQL runs as user postgres, and in a home it cannot traverse devstack keeps the
    cluster under /var/lib/postgresql, where removing the home would not reach it."""
    home = Path(tempfile.mkdtemp(prefix="chat4all-own-stack-"))
    home.chmod(0o755)
    base = free_port_block(len(STACK_PORTS), also_at=GRPC_OFFSET)
    ports = {name: base + i for i, name in enumerate(STACK_PORTS)}
    stack = OwnStack(devstack_env(home, ports), {})
    try:
        stack.devstack("up", *STACK_SERVICES)
        yield stack.read_env()
    finally:
        stack.devstack("down", *STACK_SERVICES)
        if keep():
            print(f"own stack's logs and data kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
