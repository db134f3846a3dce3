"""Dead-lettering: the original bytes, the original key, and the reason in `dlq.*` headers.

The value is never re-encoded, so an operator can replay a record exactly as it first arrived
(SPEC section 3); a tombstone (no value) stays one, and is replayed as one. Every role that
dead-letters goes through `dead_letter`, which also counts it (`dlq_messages_total{source,
reason}`): no record is written without being counted. The one exception: a copy Kafka refuses
(an original at the record size limit has no room for the `dlq.*` headers) goes without its value
and key, with `dlq.value_dropped` saying so; the original is still at `dlq.original_topic`/
`partition`/`offset` while the topic's retention keeps it, and `dlq replay` leaves such a record
alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

from chat4all_workers.errors import PermanentError
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Delivery, Producer
from chat4all_workers.observability.metrics import Metrics

DLQ_HEADER_PREFIX = "dlq."
MAX_REASON_BYTES = 2000


async def dead_letter(
    producer: Producer,
    *,
    dlq_topic: str,
    value: bytes | None,
    key: bytes | None,
    source: str,
    reason: str,
    error_type: str,
    attempts: int,
    original_topic: str,
    original_partition: int | None = None,
    original_offset: int | None = None,
    extra_headers: list[tuple[str, bytes]] | None = None,
    metrics: Metrics | None,
) -> Delivery:
    """Publish `value` unchanged to the DLQ with the reason in headers; waits for the ack, then
    counts it (`metrics`: None only for tools that are not a role, like a test's set-up)."""
    headers = [
        *(extra_headers or []),
        ("dlq.reason", reason.encode("utf-8")[:MAX_REASON_BYTES]),
        ("dlq.error_type", error_type.encode()),
        ("dlq.source", source.encode()),
        ("dlq.original_topic", original_topic.encode()),
        (
            "dlq.original_partition",
            b"" if original_partition is None else str(original_partition).encode(),
        ),
        ("dlq.original_offset", b"" if original_offset is None else str(original_offset).encode()),
        ("dlq.attempts", str(attempts).encode()),
        ("dlq.failed_at", datetime.now(UTC).isoformat().encode()),
    ]
    try:
        delivery = await producer.send(OutgoingRecord(dlq_topic, value, key, headers))
    except PermanentError as exc:
        # Kafka refuses the copy (a record at the size limit cannot also carry these headers).
        # Crashing would redeliver it forever; keep the reason and where the original still is.
        dropped = f"{len(value or b'')}-byte value and {len(key or b'')}-byte key not copied: {exc}"
        headers.append(("dlq.value_dropped", dropped.encode("utf-8")[:MAX_REASON_BYTES]))
        delivery = await producer.send(OutgoingRecord(dlq_topic, b"", None, headers))
    if metrics is not None:
        metrics.dlq_messages.inc({"source": source, "reason": error_type})
    return delivery
