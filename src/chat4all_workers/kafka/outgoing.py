"""A record to produce, as every producer of the process takes it (kafka/producer.py), with the
trace context it carries: the current one, or its own (a span per event), or, once `with_trace`
made its headers where the record was made, the one in its headers; and its envelope when it is
parked in the Redis fallback list instead (SPEC section 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import field

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace

from chat4all_workers.frozen import frozen
from chat4all_workers.observability.tracing import (
    KafkaHeaders,
    context_from_headers,
    headers_with_trace,
    kafka_injects_trace,
    tracer,
)


@frozen
class OutgoingRecord:
    topic: str
    value: bytes | None  # None: a tombstone (only a dead-lettered or replayed one)
    key: bytes | None = None
    headers: KafkaHeaders = field(default_factory=list)
    # The trace context to inject (a span per event, see roles/outbox.py); else the current one.
    context: otel_context.Context | None = None
    # The headers carry the trace context already (put there where the record was made, by
    # `with_trace`): sent as they are, whatever context the sending task runs in.
    traced: bool = False


def fallback_envelope(record: OutgoingRecord) -> bytes:
    """The SPEC section 5 envelope for a record parked while Kafka is unreachable."""
    value: object = None
    if record.value is not None:
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            value = record.value.decode("utf-8", errors="replace")
    return orjson.dumps(
        {
            "topic": record.topic,
            "key": record.key.decode("utf-8", errors="replace") if record.key is not None else None,
            "value": value,
            # With its trace context, which the backfill continues when it sends it on.
            "headers": {
                k: v.decode("latin-1")
                for k, v in (
                    record.headers
                    if record.traced
                    else headers_with_trace(record.headers, context=record.context)
                )
            },
        }
    )


def with_trace(record: OutgoingRecord) -> OutgoingRecord:
    """`record` carrying the current trace context (or its own `context`'s) in its headers, so
    that a task running in another context sends it under its maker's trace
    (kafka/coalescing.py). Under the aiokafka instrumentation, which injects its send span's
    context where the record is handed over, the context itself goes with the record instead."""
    if record.traced:
        return record
    if kafka_injects_trace():
        if record.context is not None:
            return record
        return dataclasses.replace(record, context=otel_context.get_current())
    headers = headers_with_trace(record.headers, context=record.context)
    return OutgoingRecord(record.topic, record.value, record.key, headers, traced=True)


@contextlib.contextmanager
def span_per_record(name: str, records: Sequence[OutgoingRecord]) -> Iterator[list[OutgoingRecord]]:
    """A PRODUCER span per record, continuing the trace in the record's own headers (a parked
    record's `traceparent`) or starting one; the records yielded carry their span's context, so
    each `traceparent` sent names its own span. The spans end when the block does (after the
    verdicts, when the block awaits the send)."""
    spans = [
        tracer.start_span(
            name,
            context=context_from_headers(r.headers),
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": r.topic},
        )
        for r in records
    ]
    try:
        yield [
            dataclasses.replace(r, context=trace.set_span_in_context(span))
            for r, span in zip(records, spans, strict=True)
        ]
    finally:
        for span in spans:
            span.end()
