"""Which partition a keyed record goes to: Kafka's default partitioner (the murmur2 hash of the
key, as the Java client and aiokafka compute it), so every producer of these topics, ours and the
platform's, puts a conversation's records in the same partition, and a search for them
(ops/dead_letters.py) knows which partition to read.

`KeyPartitioner` remembers each key's hash: aiokafka computes murmur2 in pure Python, about 3 us
a record, 2 % of the router's CPU per message (a py-spy profile of bench/router.py's phase (b));
our keys repeat (every record of a conversation is keyed `conversation:{id}`), and a dict lookup
costs 0.05 us. At most `max_keys` are remembered; past that the memory starts afresh.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from aiokafka.partitioner import murmur2

_MAX_KEYS = 65_536  # about 6 MB of keys and hashes at most


def key_hash(key: bytes) -> int:
    """The non-negative murmur2 hash Kafka's default partitioner takes the partition from."""
    return int(murmur2(key) & 0x7FFFFFFF)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` in a topic of `partitions` partitions."""
    return key_hash(key) % partitions


class KeyPartitioner:
    """An aiokafka partitioner giving the default partitioner's answer, each key's hash
    remembered. A record without a key goes to a random partition (an available one if any),
    as with the default."""

    def __init__(self, max_keys: int = _MAX_KEYS) -> None:
        self._max_keys = max_keys
        self._hashes: dict[bytes, int] = {}

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            hashed = self._hashes[key] = key_hash(key)
        return all_partitions[hashed % len(all_partitions)]
