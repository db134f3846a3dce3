"""Which DLQ partition holds a conversation's records: the one Kafka's default partitioner picks."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from chat4all_workers.ops.dead_letters import partition_for


@pytest.mark.parametrize("partitions", [1, 4, 12, 120])
def test_partition_for_is_the_producers_choice_for_the_key(partitions: int) -> None:
    keys = [f"conversation:{n}".encode() for n in range(500)]
    every = list(range(partitions))

    chosen = [partition_for(key, partitions) for key in keys]

    assert chosen == [DefaultPartitioner()(key, every, every) for key in keys]
