"""One record through its handler, until the handler has finished with it: the record's fate.

What the handler raises decides it (errors.py):
- nothing: the record is finished;
- PermanentError: `on_permanent` has it (the role dead-letters it), and it counts as finished;
- RetryableError, or one of `outages` (a backing service unreachable, the client libraries' own
  errors): retried in place with backoff, holding back only the record's key; an outage's
  retries at most `OUTAGE_CAP_S` apart (backoff.py), so the record goes on within seconds of
  the service's return;
- anything else is a bug: raised to the engine, which drains before raising it (draining.py).

A pending retry gives way to the drain: a record whose partition is being handed back (a stop,
a revocation) is not retried but handed back uncommitted, and the back-off wakes at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from chat4all_workers.backoff import OUTAGE_BASE_S, OUTAGE_CAP_S, retry_delay_s
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.kafka.draining import Drain
from chat4all_workers.kafka.partitions import Partition
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.observability.tracing import RecordSpan
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)

Handler = Callable[[ConsumedRecord], Awaitable[None]]
PermanentHandler = Callable[[ConsumedRecord, PermanentError], Awaitable[None]]

_RETRY_BASE_S = 0.5
_RETRY_CAP_S = 30.0


class Handling:
    """A role's handler run on each record, in the record's span, with its retries."""

    def __init__(
        self,
        *,
        role: str,
        handler: Handler,
        on_permanent: PermanentHandler,
        outages: tuple[type[Exception], ...],
        metrics: Metrics,
        drain: Drain,
    ) -> None:
        self._role = role
        self._span_name = f"{role} process"
        self._handler = handler
        self._on_permanent = on_permanent
        # Caught here, not by a wrapper around every handler call.
        self._outages = outages
        self._metrics = metrics
        self._drain = drain

    async def handle(self, partition: Partition, record: ConsumedRecord) -> bool:
        """Run the handler until it finishes the record; False if handed back (draining or
        revoked) while a retry was pending."""
        started = time.perf_counter()
        with RecordSpan(
            self._span_name,
            record.headers,
            kind=trace.SpanKind.CONSUMER,
            attributes=lambda: {
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
            },
        ):
            attempt = 0
            while True:
                try:
                    try:
                        await self._handler(record)
                    except PermanentError as exc:
                        # Dead-lettering can meet an outage too (the breaker open): then the
                        # record is retried like any other, not taken for a bug.
                        await self._on_permanent(record, exc)
                    break
                except RetryableError as exc:
                    if not await self._back_off(partition, record, attempt, exc):
                        return False
                    attempt += 1
                except self._outages as exc:
                    retry = RetryableError(f"{type(exc).__name__}: {exc}")
                    if not await self._back_off(partition, record, attempt, retry, outage=True):
                        return False
                    attempt += 1
        self._metrics.processing_duration.observe(
            {"role": self._role}, time.perf_counter() - started
        )
        return True

    async def _back_off(
        self,
        partition: Partition,
        record: ConsumedRecord,
        attempt: int,
        exc: RetryableError,
        *,
        outage: bool = False,
    ) -> bool:
        """Wait before retrying in place; False (at once, or when woken) if the record is to be
        handed back instead."""
        if self._drain.hands_back(partition):
            return False
        base_s, cap_s = (OUTAGE_BASE_S, OUTAGE_CAP_S) if outage else (_RETRY_BASE_S, _RETRY_CAP_S)
        delay = retry_delay_s(attempt, base_s=base_s, cap_s=cap_s, retry_after_s=exc.retry_after_s)
        log.warning(
            "retrying record %s-%d@%d in %.2fs: %s",
            record.topic, record.partition, record.offset, delay, exc,
        )  # fmt: skip
        await wait_event(self._drain.wakeup, timeout_s=delay)
        return not self._drain.hands_back(partition)
