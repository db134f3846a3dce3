"""OpenTelemetry set-up and the carriers that move trace context through Kafka headers and Redis."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

KafkaHeaders = list[tuple[str, bytes]]
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
log = logging.getLogger(__name__)

tracer = trace.get_tracer("chat4all_workers")

# Set once the aiokafka instrumentation is active: it then injects the trace context of its own
# "send" span into every produced record, and a second injection here would duplicate headers.
_kafka_instrumented = False


def configure_tracing(*, service_name: str, otlp_endpoint: str) -> TracerProvider:
    """A tracer provider from the standard OTEL_* settings; spans are exported only when an
    OTLP endpoint is configured, otherwise they exist just to carry trace ids into logs and headers,
    and aiokafka is instrumented only when there is somewhere to send its spans.

    Without an exporter, a trace that starts here is not recorded (ParentBased(ALWAYS_OFF)):
    its ids still reach logs and headers, but recording three spans per message nobody reads
    cost the router about a third of its throughput. A trace sampled upstream stays sampled, so
    services after this one still see it whole.
    """
    global _kafka_instrumented
    resource = Resource.create({"service.name": service_name})
    if otlp_endpoint:
        provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    else:
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if not otlp_endpoint:
        # Nothing is exported, so the instrumentation's per-record send and receive spans would
        # only be thrown away: about 8 % of the router's CPU. The trace context still travels,
        # injected by `headers_with_trace` and continued by the consumer engine's own span.
        return provider
    try:
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor

        AIOKafkaInstrumentor().instrument(tracer_provider=provider)
        _kafka_instrumented = True
    except ImportError:  # pragma: no cover - the instrumentation is an install-time dependency
        log.warning(
            "opentelemetry-instrumentation-aiokafka missing; injecting trace context ourselves"
        )
    return provider


def context_from_headers(headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context a producer left in a record's headers (W3C `traceparent`/`tracestate`)."""
    carrier = {
        k: v.decode("latin-1") for k, v in headers or () if k in ("traceparent", "tracestate")
    }
    return propagate.extract(carrier)


def headers_with_trace(
    headers: Iterable[tuple[str, bytes]] = (), *, context: otel_context.Context | None = None
) -> KafkaHeaders:
    """`headers` with the current trace context (or `context`) instead of any trace headers
    already there (a replayed record carries its first trip's context, which must not be
    continued)."""
    kept = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
    if _kafka_instrumented and context is None:
        return kept  # the instrumentation injects its send span's context
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return kept + [(k, v.encode("latin-1")) for k, v in carrier.items()]
