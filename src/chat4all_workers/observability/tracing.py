"""OpenTelemetry set-up and the carriers that move trace context through Kafka headers and Redis.

The carriers are W3C Trace Context (`traceparent`, `tracestate`; the contract's headers), read
and written here directly: the global propagator (trace context plus baggage, through dicts of
strings) cost the router about 6 µs a message for the same two headers. Without an exporter
nothing is recorded, so a record's span is a non-recording one made here (its own span id, the
trace and sampling flag it came with, or a new trace): the SDK's tracer cost 20 µs a message to
make the same ids (a twelfth of the router's CPU). With an OTLP endpoint, real spans.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

KafkaHeaders = list[tuple[str, bytes]]
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; a later version may add
# fields after a dash.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
log = logging.getLogger(__name__)

tracer = trace.get_tracer("chat4all_workers")

# Set once the aiokafka instrumentation is active: it then injects the trace context of its own
# "send" span into every produced record, and a second injection here would duplicate headers.
_kafka_instrumented = False
# Set when spans are exported (an OTLP endpoint): then records get real spans.
_exporting = False


def configure_tracing(*, service_name: str, otlp_endpoint: str) -> TracerProvider:
    """A tracer provider from the standard OTEL_* settings; spans are exported only when an
    OTLP endpoint is configured, otherwise they exist just to carry trace ids into logs and headers,
    and aiokafka is instrumented only when there is somewhere to send its spans.

    Without an exporter, a trace that starts here is not recorded (ParentBased(ALWAYS_OFF)):
    its ids still reach logs and headers, but recording three spans per message nobody reads
    cost the router about a third of its throughput. A trace sampled upstream stays sampled, so
    services after this one still see it whole.
    """
    global _kafka_instrumented, _exporting
    _exporting = bool(otlp_endpoint)
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
    """The trace context a producer left in a record's headers (W3C `traceparent`/`tracestate`);
    an empty context when there is none (or it is malformed: ignored, as the W3C spec says)."""
    parent = _parent(headers)
    if parent is None:
        return otel_context.Context()
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


class RecordSpan:
    """The current span while a record is handled: a child of the context in its headers (or a
    new trace). Recorded (and exported) only with an exporter; else a non-recording span with
    its own ids, enough for logs and the headers of what the handler produces. `attributes` is
    called only when the span is recorded.

    A class rather than a generator: entered once per record, the generator's machinery cost
    the router more than the span's ids did."""

    __slots__ = ("_attributes", "_headers", "_kind", "_name", "_recorded", "_token")

    def __init__(
        self,
        name: str,
        headers: Sequence[tuple[str, bytes]] | None,
        *,
        kind: trace.SpanKind,
        attributes: Callable[[], Mapping[str, str | int]] | None = None,
    ) -> None:
        self._name, self._headers, self._kind = name, headers, kind
        self._attributes = attributes
        self._recorded: contextlib.AbstractContextManager[trace.Span] | None = None
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> None:
        if _exporting:
            attributes = None if self._attributes is None else self._attributes()
            self._recorded = tracer.start_as_current_span(
                self._name,
                context=context_from_headers(self._headers),
                kind=self._kind,
                attributes=attributes,
            )
            self._recorded.__enter__()
            return
        span = NonRecordingSpan(_child_of(self._headers))
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._recorded is not None:
            self._recorded.__exit__(kind, error, traceback)
        elif self._token is not None:
            otel_context.detach(self._token)


def kafka_injects_trace() -> bool:
    """Whether the aiokafka instrumentation injects each produced record's trace context (its
    send span's) itself, from the context current where the record is handed to the client."""
    return _kafka_instrumented


def headers_with_trace(
    headers: Iterable[tuple[str, bytes]] = (), *, context: otel_context.Context | None = None
) -> KafkaHeaders:
    """`headers` with the current trace context (or `context`) instead of any trace headers
    already there (a replayed record carries its first trip's context, which must not be
    continued)."""
    kept = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
    if _kafka_instrumented and context is None:
        return kept  # the instrumentation injects its send span's context
    span = trace.get_current_span(context).get_span_context()
    if not span.is_valid:
        return kept
    kept.append(
        ("traceparent", b"00-%032x-%016x-%02x" % (span.trace_id, span.span_id, span.trace_flags))
    )
    if span.trace_state:
        kept.append(("tracestate", span.trace_state.to_header().encode("latin-1")))
    return kept


def _parent(headers: Sequence[tuple[str, bytes]] | None) -> SpanContext | None:
    """The `traceparent` (and `tracestate`) of `headers`, W3C Trace Context level 1: version
    00 (or a later one read as 00), non-zero ids; None when absent or malformed."""
    read = _read(headers)
    if read is None:
        return None
    trace_id, span_id, flags, state = read
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags, trace_state=state)


def _child_of(headers: Sequence[tuple[str, bytes]] | None) -> SpanContext:
    """A new span's context under the parent in `headers`, or the root of a new trace (not
    sampled: nothing records it)."""
    read = _read(headers)
    span_id = random.getrandbits(64) or 1
    if read is None:
        return SpanContext(random.getrandbits(128) or 1, span_id, is_remote=False)
    trace_id, _, flags, state = read
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)


def _read(
    headers: Sequence[tuple[str, bytes]] | None,
) -> tuple[int, int, TraceFlags, TraceState | None] | None:
    """`_parent`'s fields, unwrapped: a child's context is made from them without building its
    parent's first (each SpanContext is validated as it is made)."""
    traceparent = tracestate = None
    for name, value in headers or ():
        if name == "traceparent":
            traceparent = value
        elif name == "tracestate":
            tracestate = value
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    flags = TraceFlags(int(flags_hex, 16) & 1)
    state = TraceState.from_header([tracestate.decode("latin-1")]) if tracestate else None
    return trace_id, span_id, flags, state
