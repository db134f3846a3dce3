"""Every metric of SPEC section 7, in one registry per process (or per embedded supervisor).

A registry per `Metrics` instance, not the library's global one, lets several supervisors live in
one test process without their counters colliding.
"""

from __future__ import annotations

import bisect
import contextlib

import orjson
from aioprometheus import collectors, histogram
from aioprometheus.collectors import Collector, Gauge, Registry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Provider timestamps have a resolution of one second (WhatsApp): lag below that is noise, and a
# webhook retried by Meta after an outage is hours late.
_WEBHOOK_LAG_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 21600.0)
_PACING_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Each histogram's buckets, by its name.
_BUCKETS = {
    "worker_processing_duration_seconds": _LATENCY_BUCKETS,
    "channel_pacing_wait_seconds": _PACING_BUCKETS,
    "webhook_lag_seconds": _WEBHOOK_LAG_BUCKETS,
}


_KEY_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS  # aioprometheus's own keys


class Counter(collectors.Counter):
    """aioprometheus's Counter, counted in half the work: its `add` transforms the labels into
    the series' key twice and checks the label names every time (4 µs; the router counts
    several times a message). Same series, same keys, same rendering."""

    def add(self, labels: dict[str, str], value: float) -> None:  # type: ignore[override]
        if value < 0:
            raise ValueError("Counters can't decrease")
        key = orjson.dumps(labels, option=_KEY_OPTIONS) if labels else self.values.EMPTY_KEY
        store = self.values.store
        current = store.get(key)
        if current is None:
            self._check_labels(labels)  # once per series
            current = 0
        store[key] = current + value

    def inc(self, labels: dict[str, str]) -> None:
        self.add(labels, 1)


class Buckets(histogram.Histogram):
    """One series' buckets, as aioprometheus's aggregate keeps and shows them (`buckets`:
    cumulative counts by upper bound, `sum`, `observations`), observed in one bisection: its own
    `observe` adds one to every bucket at or above the value, a pass over all of them (1.3 us; the
    router observes once a message, the webhooks role once a status). The counts are made
    cumulative when read, at a scrape."""

    @property
    def buckets(self) -> dict[float, int]:
        cumulative, total = {}, 0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            total += count
            cumulative[bound] = total
        return cumulative

    @buckets.setter
    def buckets(self, empty: dict[float, int]) -> None:
        """Set once, by aioprometheus's constructor (its checked bounds, ending with +Inf,
        each counting 0)."""
        self._bounds = list(empty)
        self._counts = [0] * len(self._bounds)

    def observe(self, value: float) -> None:
        if value == value:  # a NaN falls in no bucket, as aioprometheus has it
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.sum += value
        self.observations += 1


class Histogram(collectors.Histogram):
    """aioprometheus's Histogram, observed without its second key transform and label check
    per observation (as Counter above), into `Buckets`."""

    def add(self, labels: dict[str, str], value: float) -> None:  # type: ignore[override]
        key = orjson.dumps(labels, option=_KEY_OPTIONS) if labels else self.values.EMPTY_KEY
        store = self.values.store
        aggregate = store.get(key)
        if aggregate is None:
            self._check_labels(labels)
            aggregate = store[key] = Buckets(*self.upper_bounds)
        aggregate.observe(float(value))

    observe = add  # type: ignore[assignment]


# Each metric's help, by its name (SPEC section 7); the label names come with its first series.
_HELP = {
    "messages_processed_total": "Records finished, by role, channel and outcome.",
    "worker_processing_duration_seconds": "Time from taking a record to finishing it.",
    "dlq_messages_total": "Records dead-lettered, by source and reason.",
    "outbox_pending_events": "Unpublished rows in outbox_events.",
    "redis_fallback_queue_length": "Items waiting in the Redis fallback list.",
    "files_stuck_merging": "Files in MERGING for longer than files.merging_stuck_minutes.",
    "uploads_cleaned_total": "Abandoned uploads cleaned by the GC.",
    "circuit_breaker_state": "0 closed, 1 open, 2 half-open.",
    "supervisor_restarts_total": "Restarts of a role after a crash.",
    "supervisor_role_state": "0 stopped, 1 running, 2 backing off, 3 failed.",
    "kafka_consumer_lag": "Records between the committed offset and the log end.",
    "event_loop_lag_seconds": "How late the event loop ran a timer, last sample.",
    "worker_in_flight_records": "Records taken from Kafka and not yet finished.",
    "channel_requests_total": (
        "Calls to channel providers, by channel, account (its key; `_other` past "
        "router.account_label_limit accounts) and outcome: sent, throttled, transient, in_doubt, "
        "rejected, paused (an account-class answer)."
    ),
    "channel_paused": (
        "Sending accounts paused in this process (an account-class answer), by channel, account "
        "(its key, or `_other`) and reason (the provider's code); 0 once resumed."
    ),
    "channel_pacing_wait_seconds": (
        "Time a send waited for its slot of the provider's pace (account and pair)."
    ),
    "router_in_doubt_total": (
        "Sends whose outcome was unknown (a worker stopped mid-send, a request timed out or reset "
        "after it was written), by channel and resolution: confirmed (the provider's word came), "
        "resent (silent for router.in_doubt_window_s: sent again), dead_lettered (silent, "
        "on_unknown_outcome = dead_letter), exhausted (silent on the last attempt), handed_back "
        "(stopped or revoked while waiting: the next owner resolves it)."
    ),
    "webhook_verdicts_total": (
        "Provider statuses recorded in the router's dedup markers, by channel and what the marker "
        "held: sent (already known), lease (a send not marked yet: its answer on the way, or in "
        "doubt), failed (given up on, yet the provider had it), absent, other (a marker of another "
        "router)."
    ),
    "webhook_async_failures_total": (
        "Sends the provider failed later, by a `failed` status webhook, by channel, the code's "
        "class and what became of the send: dead_lettered (final: FAILED, the record in the DLQ), "
        "resent (not final: the record published again), duplicate, stale (another send of the "
        "message counts now), given_up (the router had given up on it), gone (its record is no "
        "longer in Kafka), no_origin (a send of an older version)."
    ),
    "webhook_requests_total": (
        "Requests to the webhooks endpoint, by channel and outcome (accepted, parked, invalid, "
        "bad_signature, too_large, timeout, unsupported_media_type, refused, overloaded, "
        "unavailable, verify_ok, verify_refused)."
    ),
    "webhook_events_total": (
        "Events in signed webhooks, by channel, kind (status, read, echo, inbound, event, other) "
        "and outcome (produced, or the reason it was ignored)."
    ),
    "webhook_lag_seconds": "From the provider's timestamp of an event to its webhook being stored.",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = Registry()
        counter, gauge, histogram = self._counter, self._gauge, self._histogram
        self.messages_processed = counter("messages_processed_total")
        self.processing_duration = histogram("worker_processing_duration_seconds")
        self.dlq_messages = counter("dlq_messages_total")
        self.outbox_pending = gauge("outbox_pending_events")
        self.fallback_queue_length = gauge("redis_fallback_queue_length")
        self.files_stuck_merging = gauge("files_stuck_merging")
        self.uploads_cleaned = counter("uploads_cleaned_total")
        self.breaker_state = gauge("circuit_breaker_state")
        self.supervisor_restarts = counter("supervisor_restarts_total")
        self.role_state = gauge("supervisor_role_state")
        self.consumer_lag = gauge("kafka_consumer_lag")
        self.loop_lag = gauge("event_loop_lag_seconds")
        self.in_flight = gauge("worker_in_flight_records")
        self.channel_requests = counter("channel_requests_total")
        self.channel_paused = gauge("channel_paused")
        self.channel_pacing_wait = histogram("channel_pacing_wait_seconds")
        self.router_in_doubt = counter("router_in_doubt_total")
        self.webhook_verdicts = counter("webhook_verdicts_total")
        self.webhook_async_failures = counter("webhook_async_failures_total")
        self.webhook_requests = counter("webhook_requests_total")
        self.webhook_events = counter("webhook_events_total")
        self.webhook_lag = histogram("webhook_lag_seconds")

    def _counter(self, name: str) -> Counter:
        return Counter(name, _HELP[name], registry=self.registry)

    def _gauge(self, name: str) -> Gauge:
        return Gauge(name, _HELP[name], registry=self.registry)

    def _histogram(self, name: str) -> Histogram:
        return Histogram(name, _HELP[name], buckets=_BUCKETS[name], registry=self.registry)


def total(collector: Collector, **match: str) -> int:
    """The sum of a counter's series whose labels include `match`. For a figure the process
    already counts here (the router's answers per channel): read, not counted a second time."""
    count = 0.0
    for labels, value in collector.get_all():
        if isinstance(value, int | float) and all(labels.get(k) == x for k, x in match.items()):
            count += value
    return int(count)


def forget(collector: Collector, labels: dict[str, str]) -> None:
    """Drop one labelled series, e.g. the lag of a partition this process no longer owns (else
    the last value would be reported forever)."""
    with contextlib.suppress(KeyError):
        del collector.values[labels]  # type: ignore[no-untyped-call]
