"""A 3-node Kafka cluster of a test's own: `scripts/devstack` with `DEVSTACK_KAFKA_BROKERS=3` in
a temporary `DEVSTACK_HOME` on free ports, never the shared stack. Used by the `cluster` fixture
(tests/conftest.py) for the tests that kill a broker.

Node id *i* is `kafka-i`: the leader of a partition (`describe_topics` -> `leader`) and a group's
coordinator (`find_coordinator`) are node ids, so the node to kill is named by them.
The nodes' ports are picked by tests/ports.py (`CLUSTER_TEST_PORTS=LOW-HIGH` says where).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from tests.own_stack import OwnStack, devstack_env
from tests.ports import free_port_block

NODES = (1, 2, 3)


@dataclass(frozen=True)
class Cluster(OwnStack):
    def bootstrap_without(self, dead: int | None) -> str:
        """The brokers still alive once node `dead` is down (an admin client that knew the dead
        one may keep picking it); every broker for None."""
        base = int(self.env["DEVSTACK_KAFKA_PORT"])
        return ",".join(f"127.0.0.1:{base + 2 * (n - 1)}" for n in NODES if n != dead)


@contextlib.contextmanager
def cluster_running(home: Path) -> Iterator[Cluster]:
    """Three nodes up in `home` (about 11 s), all of them killed afterwards (a graceful stop,
    one node at a time, took 7-9 s more: nothing in a throwaway cluster needs it)."""
    base = free_port_block(6)  # brokers base, +2, +4; controllers base+1, +3, +5
    ports = {"DEVSTACK_KAFKA_PORT": base, "DEVSTACK_KAFKA_CONTROLLER_PORT": base + 1}
    probe = Cluster(devstack_env(home, ports, DEVSTACK_KAFKA_BROKERS="3"), {})
    try:
        probe.devstack("up", "kafka")
        yield probe.read_env()
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
