"""What the webhooks role counts, and how it tells an operator about the requests it refused.

`webhook_requests_total{channel,outcome}` counts every request by how it was answered,
`webhook_events_total{channel,kind,outcome}` every event by what became of it, and
`webhook_lag_seconds{channel}` how late a stored event was, `webhook_verdicts_total{channel,
marker}` what the provider's word found in each dedup marker. A refused request (a bad
signature, an overload, a body too large or too slow, a failure to store) is a WARNING; a flood
of them is one line per `observability.log_repeat_interval_s` per channel and kind, with the
count (the log's repeat limiting: the channel and the outcome are the condition's words).

The counters of one event-loop iteration are added together at its end (`_Tally`): an increment
through aioprometheus costs about 3 us (it serialises the labels twice), three or four per
status, and the requests answered in one iteration mostly count the same few series. Whoever
reads the metrics after an answer came (a scrape, a test) reads them added.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

from aioprometheus.collectors import Counter as MetricCounter
from aioprometheus.histogram import Histogram as Aggregator

from chat4all_workers.meta.events import InboundEvent, StatusEvent
from chat4all_workers.observability.metrics import Metrics, total
from chat4all_workers.role import RoleReport

log = logging.getLogger(__name__)

# Request outcomes answered 200 (the notification is stored: produced, parked or dead-lettered);
# the verification GETs are not notifications.
_STORED = ("accepted", "parked", "invalid")
_VERIFICATION = ("verify_ok", "verify_refused")


_Labels = tuple[tuple[str, str], ...]


class _Tally:
    """Increments of one event-loop iteration, added to their counters once it ends."""

    def __init__(self) -> None:
        self._pending: dict[tuple[int, _Labels], int] = {}
        self._counters: dict[int, MetricCounter] = {}  # by id: aioprometheus's are unhashable

    def inc(self, counter: MetricCounter, labels: _Labels) -> None:
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self._flush)
        key = (id(counter), labels)
        count = pending.get(key)
        if count is None:
            self._counters[key[0]] = counter
            count = 0
        pending[key] = count + 1

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (counter_id, labels), count in pending.items():
            self._counters[counter_id].add(dict(labels), count)


class Accounting:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._tally = _Tally()
        self._lag: dict[str, Callable[[float], None]] = {}  # per channel: the series' observe
        self.in_flight = 0
        self.requests: Counter[tuple[str, str]] = Counter()

    def count(self, channel: str, outcome: str) -> None:
        self.requests[channel, outcome] += 1
        self._tally.inc(
            self._metrics.webhook_requests, (("channel", channel), ("outcome", outcome))
        )

    def refused(self, channel: str, outcome: str, text: str) -> None:
        """A request refused (or not stored): counted, and said in the log."""
        self.count(channel, outcome)
        log.warning("webhooks: %s: %s (%s)", channel, text, outcome)

    def events(
        self, channel: str, statuses: Sequence[StatusEvent], inbound: Sequence[InboundEvent]
    ) -> None:
        """Events produced, and how late each came (from the provider's timestamp)."""
        now = time.time()
        events, observe = self._metrics.webhook_events, self._observer(channel)
        for status in statuses:
            self._tally.inc(events, _event(channel, status.kind, "produced"))
            observe(max(0.0, now - status.at.timestamp()))
        for message in inbound:
            self._tally.inc(events, _event(channel, "inbound", "produced"))
            observe(max(0.0, now - message.at.timestamp()))

    def ignored(self, channel: str, ignored: Sequence[tuple[str, str]]) -> None:
        for kind, reason in ignored:
            self._tally.inc(self._metrics.webhook_events, _event(channel, kind, reason))

    def verdict(self, channel: str, marker: str) -> None:
        """What the provider's word found in a dedup marker (intake/provider_word.py)."""
        labels = (("channel", channel), ("marker", marker))
        self._tally.inc(self._metrics.webhook_verdicts, labels)

    def _observer(self, channel: str) -> Callable[[float], None]:
        """`observe(seconds)` of the lag histogram's series for `channel`: its aggregator,
        kept, rather than a lookup by labels per observation."""
        observe = self._lag.get(channel)
        if observe is None:
            histogram, labels = self._metrics.webhook_lag, {"channel": channel}
            try:
                observe = cast(Aggregator, histogram.get_value(labels)).observe
            except KeyError:  # the series' first observation creates it
                return lambda seconds: histogram.observe(labels, seconds)
            self._lag[channel] = observe
        return observe

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "requests": {f"{c}:{o}": n for (c, o), n in sorted(self.requests.items())},
        }

    def report(self, listening: str) -> RoleReport:
        """Notifications (POSTs) answered so far, accepted (stored: 200) and refused (4xx,
        503), from `webhook_requests_total`; the address it listens on."""
        requests = self._metrics.webhook_requests
        by_outcome = {outcome: total(requests, outcome=outcome) for outcome in _STORED}
        posts = total(requests) - sum(total(requests, outcome=o) for o in _VERIFICATION)
        accepted = sum(by_outcome.values())
        return RoleReport(
            processed_total=posts,
            counts={"accepted": accepted, "refused": posts - accepted},
            state={"listening": listening, "in_flight": self.in_flight},
        )


def _event(channel: str, kind: str, outcome: str) -> _Labels:
    return (("channel", channel), ("kind", kind), ("outcome", outcome))
