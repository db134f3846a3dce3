"""Failures the provider reports later, by webhook, ended as the same answer given at once.

Meta reports some failures only in a `failed` status webhook (131026 undeliverable, 131049 the
marketing limit, 131053 media download, 130472 an experiment, at times 131047 and the rate
limits: developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes,
"Cloud API errors are returned either synchronously ..., asynchronously via Webhook, or
sometimes through both"). Its code is classified by the channel's one table (meta/errors.py),
and the send ends exactly as that answer would have ended it at once:

- rejected (window closed, a template, this message): FAILED with the code (the status record
  says it), and the ORIGINAL record, read back from Kafka by the callback data's origin
  (kafka/originals.py), dead-lettered as it was: `dlq replay` sends it again; a window error
  also closes the user's window (delivery/windows.py);
- throttled, transient, in doubt, or the account: not final. The original record is published
  again to its topic (formats/resend.py: the attempts spent, the first throttle), for the router
  to send once more at the provider's pace within the attempts and deadlines left; no FAILED.

Either way the send's dedup marker says the provider failed it (`failed:{type}:{origin}#{id}`,
delivery/markers.py), so a redelivery of the original sends nothing, a status of the same
provider id arriving late does not turn it back into `sent:`, and a duplicate of the webhook
does nothing twice. Counted in `webhook_async_failures_total{channel,error_class,action}`
(action: dead_lettered, resent, duplicate, stale: another send of the message counts now,
given_up: the router had given up on it already, no_origin: a send of an older version).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from chat4all_workers.delivery.markers import ProviderVerdicts, marker_key
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import PermanentError, WindowClosedError
from chat4all_workers.formats.resend import history, resend_headers
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.originals import OriginalRecords
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Producer
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.meta.callback import parse_origin
from chat4all_workers.meta.errors import CODES, classify, error_for_verdict
from chat4all_workers.meta.events import StatusEvent
from chat4all_workers.observability.metrics import Metrics

log = logging.getLogger(__name__)

RESENT = "resent"  # the error type of a marker whose record was published again


@dataclass
class Endings:
    """What one request's failed statuses came to: the FAILED statuses to produce (the final
    ones) and the copies to publish again (stored with the request's other records)."""

    failed: list[StatusEvent] = field(default_factory=list)
    resend: list[OutgoingRecord] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Failures:
    """Ends the sends that failed statuses report (one per webhooks role)."""

    verdicts: ProviderVerdicts
    originals: OriginalRecords
    windows: Windows
    producer: Producer
    _: KW_ONLY
    key: Callable[[str], str]
    dlq_topic: str
    metrics: Metrics

    async def end(self, statuses: list[StatusEvent]) -> Endings:
        """End each failed status's send; the rest of the request goes on as usual."""
        endings = Endings()
        for status in statuses:
            await self._end_one(status, endings)
        return endings

    async def _end_one(self, status: StatusEvent, endings: Endings) -> None:
        failure = status.error
        code = None if failure is None else failure.code
        verdict = classify(400, code, None, CODES[status.channel])
        text = _text(status)
        error = error_for_verdict(verdict, text, code=code)
        final = isinstance(error, PermanentError)
        error_class = verdict.error_class.value
        origin = parse_origin(status.origin) if status.origin else None
        if status.message_id is None or origin is None or status.origin is None:
            self._count(status, error_class, "no_origin")
            if final:
                endings.failed.append(status)
            return
        error_type = error.error_type if isinstance(error, PermanentError) else RESENT
        key = self.key(marker_key(status.message_id, status.channel))
        found = await self.verdicts.provider_failed(
            key, status.provider_message_id, error_type=error_type, origin=status.origin
        )
        if found != "failed":  # a duplicate webhook, another send counts now, or given up
            self._count(status, error_class, found)
            if final and found == "duplicate":
                endings.failed.append(status)  # the status is idempotent; the DLQ copy is not
            return
        topic, partition, offset = origin
        record = await self.originals.fetch(topic, partition, offset)
        if isinstance(error, PermanentError):
            endings.failed.append(status)
            await self._dead_letter(status, error, record, origin, error_class)
            if isinstance(error, WindowClosedError) and status.recipient:
                await self.windows.close(
                    status.channel,
                    status.account or "",
                    status.recipient,
                    sent_at_s=status.at.timestamp(),
                )
            self._count(status, error_class, "dead_lettered")
            return
        if record is None or record.value is None:
            log.warning(
                "%s: the provider failed %s later (%s), and its record %s:%d@%d is gone: "
                "not sent again",
                status.channel, status.message_id, text, topic, partition, offset,
            )  # fmt: skip
            self._count(status, error_class, "gone")
            return
        past = history(record)
        throttled_since = past.throttled_since
        if verdict.error_class.value == "throttled" and throttled_since is None:
            throttled_since = status.at.timestamp()
        headers = resend_headers(
            record.headers,
            attempts=past.attempts + 1,
            throttled_since=throttled_since,
            origin=status.origin,
        )
        endings.resend.append(OutgoingRecord(topic, record.value, record.key, headers))
        self._count(status, error_class, "resent")

    async def _dead_letter(
        self,
        status: StatusEvent,
        error: PermanentError,
        found: ConsumedRecord | None,
        origin: tuple[str, int, int],
        error_class: str,
    ) -> None:
        """The original record, as it was, to the DLQ: `dlq replay` sends it again (a record
        no longer in Kafka goes without its value, and says so: dlq.value_dropped)."""
        topic, partition, offset = origin
        headers: list[tuple[str, bytes]] = [("dlq.error_class", error_class.encode())]
        code = status.error.code if status.error is not None else None
        if code is not None:
            headers.insert(0, ("dlq.provider_code", str(code).encode()))
        if found is None:
            headers.append(("dlq.value_dropped", b"the original record is no longer in Kafka"))
        await dead_letter(
            self.producer,
            dlq_topic=self.dlq_topic,
            value=None if found is None else found.value,
            key=None if found is None else found.key,
            source="webhooks",
            reason=f"{status.channel}: {error}",
            error_type=error.error_type,
            attempts=(0 if found is None else history(found).attempts) + 1,
            original_topic=topic,
            original_partition=partition,
            original_offset=offset,
            extra_headers=headers,
            metrics=self.metrics,
        )

    def _count(self, status: StatusEvent, error_class: str, action: str) -> None:
        labels = {"channel": status.channel, "error_class": error_class, "action": action}
        self.metrics.webhook_async_failures.inc(labels)


def _text(status: StatusEvent) -> str:
    """The failure in the provider's words, as an answer's would be: `(131026) title: details`."""
    failure = status.error
    if failure is None:
        return "failed, no reason given"
    code = f"({failure.code}) " if failure.code is not None else ""
    words = ": ".join(t for t in (failure.title, failure.details) if t) or "no reason given"
    return f"{code}{words}"
