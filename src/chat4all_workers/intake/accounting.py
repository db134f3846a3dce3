"""What the webhooks role counts, and how it tells an operator about refused requests.

`webhook_requests_total{channel,outcome}` counts every request by how it was answered,
`webhook_events_total{channel,kind,outcome}` every event by what became of it, and
`webhook_lag_seconds{channel}` how late a stored event was. A refused request (a bad
signature, an overload, a body too large or too slow, a failure to store) is a WARNING; a flood
of them is one line per `observability.log_repeat_interval_s` per channel and kind, with the
count (the log's repeat limiting: the channel and the outcome are the condition's words).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from chat4all_workers.meta.events import InboundEvent, StatusEvent
from chat4all_workers.observability.metrics import Metrics, total
from chat4all_workers.role import RoleReport

log = logging.getLogger(__name__)

# Request outcomes answered 200 (the notification is stored: produced, parked or dead-lettered);
# the verification GETs are not notifications.
_STORED = ("accepted", "parked", "invalid")
_VERIFICATION = ("verify_ok", "verify_refused")


class Accounting:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.in_flight = 0
        self.requests: Counter[tuple[str, str]] = Counter()

    def count(self, channel: str, outcome: str) -> None:
        self.requests[channel, outcome] += 1
        self._metrics.webhook_requests.inc({"channel": channel, "outcome": outcome})

    def refused(self, channel: str, outcome: str, text: str) -> None:
        """A request refused (or not stored): counted, and said in the log."""
        self.count(channel, outcome)
        log.warning("webhooks: %s: %s (%s)", channel, text, outcome)

    def events(
        self, channel: str, statuses: Sequence[StatusEvent], inbound: Sequence[InboundEvent]
    ) -> None:
        """Events produced, and how late each came (from the provider's timestamp)."""
        now = time.time()
        lag = {"channel": channel}
        for status in statuses:
            self._metrics.webhook_events.inc(
                {"channel": channel, "kind": status.kind, "outcome": "produced"}
            )
            self._metrics.webhook_lag.observe(lag, max(0.0, now - status.at.timestamp()))
        for message in inbound:
            self._metrics.webhook_events.inc(
                {"channel": channel, "kind": "inbound", "outcome": "produced"}
            )
            self._metrics.webhook_lag.observe(lag, max(0.0, now - message.at.timestamp()))

    def ignored(self, channel: str, ignored: Sequence[tuple[str, str]]) -> None:
        for kind, reason in ignored:
            self._metrics.webhook_events.inc({"channel": channel, "kind": kind, "outcome": reason})

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
