"""The record a consuming role receives: a plain, immutable copy of what aiokafka fetched."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from chat4all_workers.frozen import frozen


@frozen(slots=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp_ms: int

    @classmethod
    def from_aiokafka(cls, record: ConsumerRecord[bytes, bytes]) -> ConsumedRecord:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            # Kafka allows a header without a value (null); any client may write one. Empty
            # bytes keep `headers` what its type says, so no reader of it trips over None.
            headers=tuple((k, b"" if v is None else v) for k, v in record.headers or ()),
            timestamp_ms=record.timestamp,
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", errors="replace")
        return None
