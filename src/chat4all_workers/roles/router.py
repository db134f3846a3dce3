"""The router: delivers each `message_processing` record to its channels, at most once each.

Per record (records of one conversation in order, conversations concurrently: the consumer
engine's keyed concurrency):

1. Validate against the wire format (roles/message.py): a tombstone, bad JSON, a missing or
   mistyped field, an unknown channel: straight to the DLQ as `invalid_record` with a reason
   naming each bad field, no retries, no sends. A chosen channel without a recipient fails for
   that channel alone, also `invalid_record`, with nothing called.
2. A file message is sent only when its file is COMPLETED and its object exists; otherwise every
   channel FAILS (`file_unavailable`) and the record is dead-lettered.
3. `all` expands to `router.all_channels`. The channels of one message are sent concurrently; a
   failure on one never holds back the other.
4. Per channel, at most once within `router.dedup_ttl_s` (24 h), however often Kafka redelivers
   (roles/dedup.py): the Redis key `message:dedup:{message_id}:{channel}` is claimed with a short
   lease (renewed before each attempt), then set to `sent:{provider_message_id}` once the
   provider accepted the message. A redelivered record that finds `sent:` re-emits SENT
   (statuses are idempotent) and sends nothing; one that finds another worker's live lease waits
   (the engine holds back only that conversation). A failed send releases its claim, so a replay
   from the DLQ can try again. A lease that expired means a worker died mid-send and the
   provider may or may not have the message: by default (`router.on_unknown_outcome =
   "dead_letter"`) that channel is dead-lettered as `delivery_unknown` rather than sent again, so
   the promise stays "at most once" and the doubt goes to an operator; "resend" trades it for
   at-least-once.
5. Send with up to `router.max_attempts` attempts and exponential backoff with jitter (the
   provider's Retry-After when longer). Then SENT (with the provider's id) or, after exhaustion
   or a permanent provider error, FAILED goes to `message_status_updates`; status updates are
   produced with `fallback=True`, so they are parked in Redis while Kafka's breaker is open.
6. If any channel failed, the ORIGINAL record (bytes and key unchanged) goes to the DLQ once, with
   the per-channel reasons in `dlq.reason`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from miniopy_async.error import S3Error

from chat4all_workers.backoff import retry
from chat4all_workers.channels import build_adapters
from chat4all_workers.channels.base import ChannelAdapter, OutboundMessage, SendResult
from chat4all_workers.errors import (
    InvalidRecordError,
    PermanentError,
    RetryableError,
)
from chat4all_workers.kafka.producer import OutgoingRecord
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.logging import log_context
from chat4all_workers.resources import Need
from chat4all_workers.roles.base import RoleContext, RoleSpec, outlast_outages
from chat4all_workers.roles.consuming import consume, dead_letter_record
from chat4all_workers.roles.dedup import SendMarkers, State
from chat4all_workers.roles.message import Message, parse_message

log = logging.getLogger(__name__)


class _UnknownOutcomeError(PermanentError):
    error_type = "delivery_unknown"


class FileUnavailableError(PermanentError):
    """A file message whose file is not COMPLETED, or whose object is missing: nothing sent."""

    error_type = "file_unavailable"


@dataclass(frozen=True)
class _ChannelFailure:
    channel: str
    error: PermanentError | RetryableError
    attempts: int


class Router:
    def __init__(self, ctx: RoleContext, adapters: dict[str, ChannelAdapter]) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.adapters = adapters
        self.redis = ctx.resources.redis_client()
        self.producer = ctx.resources.kafka()
        r = self.settings.router
        whatsapp, instagram = self.settings.whatsapp, self.settings.instagram
        # A lease covers one attempt and the backoff before it, and is renewed per attempt; a
        # worker that dies mid-send blocks its messages for at most this long.
        lease_s = max(whatsapp.timeout_s, instagram.timeout_s) + r.retry_cap_s + 2.0
        self.markers = SendMarkers(self.redis, ttl_s=r.dedup_ttl_s, lease_s=lease_s)

    async def handle(self, record: ConsumedRecord) -> None:
        message = parse_message(record.value, self.settings.router.all_channels)
        with log_context(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            user_id=message.sender_id,
        ):
            outbound = await self._outbound(message)
            failures: list[_ChannelFailure] = []
            if len(message.channels) == 1:  # the common case: nothing to run side by side
                await self._deliver(message, message.channels[0], outbound, failures)
                if failures:
                    await self._dead_letter(record, failures)
                return
            # gather, not a task group: one channel's trouble must not cancel the other's send
            # halfway (a cancelled send may have reached the provider without being marked).
            results = await asyncio.gather(
                *(self._deliver(message, c, outbound, failures) for c in message.channels),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            for error in errors:
                if not isinstance(error, RetryableError):
                    raise error  # a bug, or cancellation
            if errors:
                raise errors[0]  # the engine retries the record; sent channels are deduplicated
            if failures:
                await self._dead_letter(record, failures)

    async def _outbound(self, message: Message) -> dict[str, OutboundMessage | PermanentError]:
        """What to send per channel; a channel that cannot be sent to holds its reason."""
        document_url = filename = mime_type = ""
        file_problem: PermanentError | None = None
        if message.kind == "file":
            assert message.file_id is not None
            try:
                document_url, filename, mime_type = await self._file_link(message.file_id)
            except PermanentError as exc:
                file_problem = exc
        prepared: dict[str, OutboundMessage | PermanentError] = {}
        for channel in message.channels:
            recipient = message.recipients.get(channel)
            if file_problem is not None:
                prepared[channel] = file_problem
            elif not recipient:
                # The reason names the field; _dead_letter puts the channel in front once.
                prepared[channel] = InvalidRecordError(f"no recipient (recipients.{channel})")
            else:
                prepared[channel] = OutboundMessage(
                    message_id=message.message_id,
                    conversation_id=message.conversation_id,
                    recipient=recipient,
                    kind="file" if message.kind == "file" else "text",
                    text=message.content,
                    document_url=document_url,
                    filename=filename,
                    mime_type=mime_type,
                )
        return prepared

    async def _file_link(self, file_id: str) -> tuple[str, str, str]:
        """A download link for a COMPLETED file whose object exists; PermanentError otherwise."""
        row = await self.ctx.resources.postgres().fetchrow(
            "SELECT status, storage_key, filename, mime_type FROM files WHERE id = $1",
            uuid.UUID(file_id),
        )
        if row is None:
            raise FileUnavailableError(f"payload.file_id: file {file_id} does not exist")
        if row["status"] != "COMPLETED" or not row["storage_key"]:
            raise FileUnavailableError(
                f"payload.file_id: file {file_id} is {row['status']}, not COMPLETED"
            )
        s3 = self.ctx.resources.s3_client()
        bucket = self.settings.s3.bucket
        try:
            await s3.stat_object(bucket, row["storage_key"])
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise FileUnavailableError(
                    f"payload.file_id: the object of file {file_id} is missing"
                ) from None
            raise RetryableError(f"s3: {exc.code}") from exc
        url = await s3.presigned_get_object(bucket, row["storage_key"], expires=timedelta(hours=24))
        return str(url), str(row["filename"]), str(row["mime_type"] or "")

    async def _deliver(
        self,
        message: Message,
        channel: str,
        outbound: dict[str, OutboundMessage | PermanentError],
        failures: list[_ChannelFailure],
    ) -> None:
        prepared = outbound[channel]
        if isinstance(prepared, PermanentError):
            failures.append(_ChannelFailure(channel, prepared, 0))
            await self._emit(message, channel, "FAILED", {"reason": str(prepared)})
            self._count(channel, "failed")
            return
        key = self.ctx.resources.redis_key(f"message:dedup:{message.message_id}:{channel}")
        claim = await self.markers.claim(key)
        if claim.state is State.SENT:
            # Sent before (a redelivery): say so again, harmlessly, and send nothing.
            details = {"provider_message_id": claim.provider_message_id}
            await self._emit(message, channel, "SENT", details)
            self._count(channel, "duplicate")
            return
        if claim.state is State.BUSY:
            raise RetryableError(
                "another worker is sending this message",
                retry_after_s=max(0.5, claim.retry_after_s),
            )
        if claim.state is State.ORPHANED and self.settings.router.on_unknown_outcome != "resend":
            await self.markers.release(key, claim.lease)
            reason = "a worker stopped mid-send; the provider may already have it"
            failures.append(_ChannelFailure(channel, _UnknownOutcomeError(reason), 1))
            self._count(channel, "unknown")
            return
        lease = claim.lease
        attempts = 0

        async def attempt() -> SendResult:
            nonlocal attempts, lease
            if attempts:
                renewed = await self.markers.renew(key, lease)
                if renewed is None:
                    raise PermanentError("lost the send lease to another worker")
                lease = renewed
            attempts += 1
            result = await self.adapters[channel].send(prepared)
            self.ctx.metrics.channel_requests.inc({"channel": channel, "outcome": "accepted"})
            return result

        r = self.settings.router
        try:
            result = await retry(
                attempt,
                attempts=r.max_attempts,
                base_s=r.retry_base_s,
                cap_s=r.retry_cap_s,
                on_retry=lambda n, exc, delay: self._retrying(channel, n, exc, delay),
            )
        except (RetryableError, PermanentError) as exc:
            await outlast_outages(
                self.ctx, lambda: self.markers.release(key, lease), what="releasing the lease"
            )
            failures.append(_ChannelFailure(channel, exc, attempts))
            log.warning("%s send failed after %d attempt(s): %s", channel, attempts, exc)
            await self._emit(message, channel, "FAILED", {"reason": str(exc), "attempts": attempts})
            self._count(channel, "failed")
            return
        # The provider has it: record that through a Redis outage, or a redelivery would find
        # an expired lease and report the outcome unknown.
        await outlast_outages(
            self.ctx,
            lambda: self.markers.mark_sent(key, result.provider_message_id),
            what="marking the send done",
        )
        await self._emit(
            message, channel, "SENT", {"provider_message_id": result.provider_message_id}
        )
        self._count(channel, "sent")

    def _retrying(self, channel: str, attempt: int, exc: RetryableError, delay: float) -> None:
        self.ctx.metrics.channel_requests.inc({"channel": channel, "outcome": "retryable_error"})
        log.info("%s attempt %d failed (%s); retrying in %.2fs", channel, attempt, exc, delay)

    async def _emit(
        self, message: Message, channel: str, status: str, details: dict[str, Any]
    ) -> None:
        update = {
            "message_id": message.message_id,
            "conversation_id": message.conversation_id,
            "channel": channel,
            "new_status": status,
            "timestamp": datetime.now(UTC).isoformat(),
            "details": details,
        }
        record = OutgoingRecord(
            self.settings.topics.message_status_updates,
            orjson.dumps(update),
            f"conversation:{message.conversation_id}".encode(),
        )
        await self.producer.send(record, fallback=True)

    async def _dead_letter(self, record: ConsumedRecord, failures: list[_ChannelFailure]) -> None:
        reason = "; ".join(f"{f.channel}: {f.error}" for f in failures)
        permanent = [f.error for f in failures if isinstance(f.error, PermanentError)]
        error_type = permanent[0].error_type if permanent else "retries_exhausted"
        await dead_letter_record(
            self.ctx,
            record,
            reason=reason,
            error_type=error_type,
            attempts=max(f.attempts for f in failures),
        )

    def _count(self, channel: str, outcome: str) -> None:
        self.ctx.metrics.messages_processed.inc(
            {"role": "router", "channel": channel, "outcome": outcome}
        )


async def run(ctx: RoleContext) -> None:
    adapters = build_adapters(ctx.settings, ctx.resources.http_client())
    router = Router(ctx, adapters)
    try:
        await consume(ctx, topic=ctx.settings.topics.message_processing, handler=router.handle)
    finally:
        for adapter in adapters.values():
            await adapter.aclose()


ROLE = RoleSpec(
    name="router",
    description="sends message_processing records to WhatsApp/Instagram, deduplicated, retried",
    needs=frozenset({Need.KAFKA, Need.REDIS, Need.HTTP, Need.POSTGRES, Need.S3}),
    run=run,
)
