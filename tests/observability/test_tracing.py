"""Trace context travels through Kafka headers."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from chat4all_workers.observability.tracing import context_from_headers, headers_with_trace

tracer = TracerProvider().get_tracer("test")


def test_headers_with_trace_replaces_old_trace_headers_with_the_current_span() -> None:
    stale = [("event_id", b"e1"), ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]

    with tracer.start_as_current_span("work") as span:
        headers = headers_with_trace(stale)
    trace_id = format(span.get_span_context().trace_id, "032x")

    assert ("event_id", b"e1") in headers
    parents = [v.decode() for k, v in headers if k == "traceparent"]
    assert len(parents) == 1
    assert parents[0].split("-")[1] == trace_id


def test_context_from_headers_continues_the_producer_trace() -> None:
    with tracer.start_as_current_span("producer") as span:
        headers = headers_with_trace()

    context = context_from_headers(headers)

    continued = trace.get_current_span(context).get_span_context()
    assert continued.trace_id == span.get_span_context().trace_id
