"""Which partition a keyed record goes to: the one Kafka's default partitioner picks (the Java
client's and aiokafka's), whether computed once (`partition_for`, the DLQ search) or remembered
per key by the producer (`KeyPartitioner`)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from chat4all_workers.kafka.partitioning import KeyPartitioner, partition_for

KEYS = [f"conversation:{n}".encode() for n in range(500)]


@pytest.mark.parametrize("partitions", [1, 4, 12, 120])
def test_partition_for_is_the_default_partitioners_choice_for_the_key(partitions: int) -> None:
    every = list(range(partitions))

    chosen = [partition_for(key, partitions) for key in KEYS]

    assert chosen == [DefaultPartitioner()(key, every, every) for key in KEYS]


def test_key_partitioner_answers_as_the_default_with_keys_remembered_or_not() -> None:
    partitioner = KeyPartitioner(max_keys=64)  # 500 keys: its memory starts afresh many times
    every, available = list(range(12)), [0, 5]

    twice = [partitioner(key, every, available) for key in KEYS + KEYS[::-1]]

    expected = [DefaultPartitioner()(key, every, available) for key in KEYS + KEYS[::-1]]
    assert twice == expected
    assert len(partitioner._hashes) <= 64


def test_key_partitioner_sends_a_record_without_a_key_to_an_available_partition() -> None:
    partitioner = KeyPartitioner()

    chosen = {partitioner(None, list(range(12)), [3, 7]) for _ in range(200)}
    unavailable = {partitioner(None, [0, 1], []) for _ in range(200)}

    assert chosen == {3, 7}
    assert unavailable == {0, 1}
