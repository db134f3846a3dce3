"""A 3-node Kafka cluster of a test's own: `scripts/devstack` with `DEVSTACK_KAFKA_BROKERS=3` in
a temporary `DEVSTACK_HOME` on free ports, never the shared stack. Used by the `cluster` fixture
(tests/conftest.py) for the tests that kill a broker.

Node id *i* is `kafka-i`: the leader of a partition (`describe_topics` -> `leader`) and a group's
coordinator (`find_coordinator`) are node ids, so the node to kill is named by them.
`CLUSTER_TEST_PORTS=LOW-HIGH` is where the nodes' ports are picked, for a machine where each user
has a port range; by default below the kernel's ephemeral range (ip_local_port_range), from
20000: a port picked inside it could be taken by some client's outgoing connection in the
seconds between the pick and the broker's bind (a cluster once failed to start so, `Address
already in use`, while other tests ran beside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from tests.stack import DEVSTACK

NODES = (1, 2, 3)


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]  # DEVSTACK_* of this stack
    exported: dict[str, str]  # what `scripts/devstack env` printed

    @property
    def bootstrap(self) -> str:
        return self.exported["KAFKA_BOOTSTRAP_SERVERS"]

    def bootstrap_without(self, dead: int | None) -> str:
        """The brokers still alive once node `dead` is down (an admin client that knew the dead
        one may keep picking it); every broker for None."""
        base = int(self.env["DEVSTACK_KAFKA_PORT"])
        return ",".join(f"127.0.0.1:{base + 2 * (n - 1)}" for n in NODES if n != dead)

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
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        assert proc.returncode == 0, f"devstack {shlex.join(args)}:\n{err.decode()}"
        return out.decode()


def free_base_port() -> int:
    """A base port p with p .. p+5 free (brokers p, p+2, p+4; controllers p+1, p+3, p+5)."""
    low, high = _port_range()
    for _ in range(50):
        base = random.randrange(low, high - 5, 2)
        ports = range(base, base + 6)
        with contextlib.ExitStack() as held:
            try:
                for port in ports:
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no six free consecutive ports in {low}-{high}")


def _port_range() -> tuple[int, int]:
    given = os.environ.get("CLUSTER_TEST_PORTS")
    if given:
        low, high = (int(p) for p in given.split("-"))
        return low, high
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 20000, max(20000 + 64, ephemeral_low - 1)


@contextlib.contextmanager
def cluster_running(home: Path) -> Iterator[Cluster]:
    """Three nodes up in `home` (about 11 s), all of them killed afterwards (a graceful stop,
    one node at a time, took 7-9 s more: nothing in a throwaway cluster needs it)."""
    base = free_base_port()
    # Not the session's stack: devstack's Kafka tools would go to KAFKA_BOOTSTRAP_SERVERS.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DEVSTACK_", "KAFKA_"))},
        "DEVSTACK_HOME": str(home),
        "DEVSTACK_KAFKA_BROKERS": "3",
        "DEVSTACK_KAFKA_PORT": str(base),
        "DEVSTACK_KAFKA_CONTROLLER_PORT": str(base + 1),
    }
    probe = Cluster(env, {})
    try:
        probe.devstack("up", "kafka")
        exported = dict(
            shlex.split(line)[1].split("=", 1)
            for line in probe.devstack("env").splitlines()
            if line.startswith("export ")
        )
        yield Cluster(env, exported)
    finally:
        probe.devstack("stop", "--kill", "kafka")
        logs = home / "logs"
        if logs.exists():
            print(f"cluster logs in {logs}", file=sys.stderr)


async def describe_without(
    cluster: Cluster, dead: int | None, topic: str, group: str
) -> tuple[dict[str, Any], int]:
    """The topic's partitions and the group's coordinator, asked of the brokers still alive
    (`dead` None: of all of them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_without(dead))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return described, await admin.find_coordinator(group)
    finally:
        await admin.close()


def leaders(described: dict[str, Any]) -> dict[int, int]:
    """Partition -> node id of its leader (-1: none), from `describe_topics`."""
    return {p["partition"]: p["leader"] for p in described["partitions"]}
