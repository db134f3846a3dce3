"""What comes out of a send: its status update (SENT, FAILED), its end in the marker when it is
given up on, and the counters an operator reads.

Every outcome of a channel goes through here once: the `message_status_updates` record
(formats/status_update.py: the one writer of the format, shared with the webhooks role),
produced with the other statuses of its event-loop iteration in one call (kafka/coalescing.py)
and parked in Redis when it was not handed to Kafka (the breaker open, or not taken in time), as
a `fallback=True` send parks it, and `messages_processed_total{role,channel,outcome}`; each
answer of the provider is counted in `channel_requests_total{channel,outcome}`.
"""

from __future__ import annotations

from typing import Any

from chat4all_workers.background import Spawn
from chat4all_workers.delivery.failures import ChannelFailure
from chat4all_workers.delivery.lease import Lease, Leases
from chat4all_workers.delivery.markers import Kind
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import CircuitOpenError, PermanentError, RetryableError
from chat4all_workers.formats.message import Message
from chat4all_workers.formats.status_update import status_record
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.producer import Delivery, Producer, SendOutcome
from chat4all_workers.observability.metrics import Metrics


class Outcomes:
    def __init__(
        self, producer: Producer, leases: Leases, *, topic: str, metrics: Metrics, spawn: Spawn
    ) -> None:
        """`spawn` owns the task each loop iteration's statuses are produced in."""
        self._producer = producer
        self._coalescer = ProduceCoalescer(producer, spawn=spawn)
        self._leases = leases
        self._topic = topic
        self._metrics = metrics

    async def sent(
        self, send: Send, provider_message_id: str | None, *, outcome: str = "sent", **more: Any
    ) -> None:
        """SENT with the provider's id; `outcome` is what the counter says (`duplicate`: a
        redelivery of a message sent before)."""
        details = {"provider_message_id": provider_message_id, **more}
        await self.emit(send.message, send.channel, "SENT", details)
        self.count(send.channel, outcome)

    async def fail(self, send: Send, error: PermanentError | RetryableError, attempts: int) -> None:
        await self.failed(
            send.message, ChannelFailure(send.channel, error, attempts), send.failures
        )

    async def failed(
        self, message: Message, failure: ChannelFailure, failures: list[ChannelFailure]
    ) -> None:
        """FAILED for the channel, with the reason; the record keeps it for its DLQ copy."""
        failures.append(failure)
        await self.emit(message, failure.channel, "FAILED", failure.details())
        self.count(failure.channel, "failed")

    async def give_up(
        self,
        send: Send,
        lease: Lease | None,
        error: PermanentError | RetryableError,
        attempts: int,
    ) -> Verdict:
        """FAILED for this channel, and its marker says so (`failed:`). Should the provider's
        word have come first (`sent:`), the send went through after all: SENT instead."""
        error_type = error.error_type if isinstance(error, PermanentError) else "retries_exhausted"
        key = send.key if lease is None else lease.key
        marker = await self._leases.give_up(key, lease, error_type=error_type, origin=send.origin)
        if marker.kind is Kind.SENT:
            await self.sent(send, marker.provider_message_id)
            return Verdict.SENT
        await self.fail(send, error, attempts)
        return Verdict.OTHER

    async def emit(
        self, message: Message, channel: str, status: str, details: dict[str, Any]
    ) -> None:
        record = status_record(
            self._topic,
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            channel=channel,
            status=status,
            details=details,
        )
        # With the statuses of the other sends of this loop iteration, in one call: a call of
        # its own per status cost 25-31 us of CPU against 19-22 us (500 at once, in-process).
        outcome: SendOutcome
        try:
            (outcome,) = await self._coalescer.send_each([record])
        except CircuitOpenError as refused:  # nothing handed over: parked like the rest
            outcome = refused
        if isinstance(outcome, Delivery):
            return
        if isinstance(outcome, RetryableError) and self._producer.fallback_sink is not None:
            await self._producer.park([record])  # never handed to Kafka: parked in Redis
            return
        raise outcome

    def request(self, send: Send, outcome: str) -> None:
        """One answer of the provider (`channel_requests_total`, by channel, account label and
        outcome)."""
        labels = {"channel": send.channel, "account": send.lane.label, "outcome": outcome}
        self._metrics.channel_requests.inc(labels)

    def count(self, channel: str, outcome: str) -> None:
        self._metrics.messages_processed.inc(
            {"role": "router", "channel": channel, "outcome": outcome}
        )
