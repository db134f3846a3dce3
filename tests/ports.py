"""Ports for the services a test starts of its own (a Kafka cluster, a whole stack).

Picked below the kernel's ephemeral range (ip_local_port_range), from 20000: a port picked inside
it could be taken by some client's outgoing connection in the seconds between the pick and the
service's bind (a cluster once failed to start so, `Address already in use`, while other tests
ran beside it). `CLUSTER_TEST_PORTS=LOW-HIGH` picks them elsewhere, for a machine where each
user has a port range.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from pathlib import Path

LOW = 20000


def free_port_block(count: int, *, also_at: int = 0) -> int:
    """A base port p with p .. p+count-1 free (and, with `also_at`, p+also_at .. as well: the
    SeaweedFS listeners each take their port + 10000 for gRPC)."""
    low, high = _port_range()
    span = count + also_at
    if high - low < span:
        raise RuntimeError(f"CLUSTER_TEST_PORTS {low}-{high} is narrower than {span} ports")
    for _ in range(50):
        base = random.randrange(low, high - span)
        ports = [*range(base, base + count)]
        if also_at:
            ports += range(base + also_at, base + also_at + count)
        with contextlib.ExitStack() as held:
            try:
                for port in ports:
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} free consecutive ports in {low}-{high}")


def _port_range() -> tuple[int, int]:
    given = os.environ.get("CLUSTER_TEST_PORTS")
    if given:
        low, high = (int(p) for p in given.split("-"))
        return low, high
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return LOW, max(LOW + 64, ephemeral_low - 1)
