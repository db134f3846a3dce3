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
   provider accepted the message (and, for Instagram, the provider's id is remembered in the
   provider index for its read receipts). A redelivered record that finds `sent:` (or a marker
   this code did not write: the original router's) re-emits SENT (statuses are idempotent) and
   sends nothing; one that finds another worker's live lease waits (the engine holds back only
   that conversation). A channel given up on (FAILED) leaves `failed:{error_type}:{record}`:
   a redelivery of the same record emits FAILED again and sends nothing; a replay from the DLQ
   (another record) takes it over and tries again.
   A send whose outcome is unknown (an expired lease: a worker died mid-send; an attempt that
   timed out or was reset after its request was written; a cancel that could not wait for the
   answer) is *in doubt*: the provider may or may not have it. It waits, holding back only its
   conversation (`held()`), up to `router.in_doubt_window_s` for the provider's word, which the
   webhooks role writes into the marker from the provider's status webhooks: found, it is SENT
   with the provider's id and not sent again; not found when the window closes, it is sent again
   (counted as an attempt; `router.on_unknown_outcome = "resend"`, the default) or FAILED and
   dead-lettered as `delivery_unknown` (`"dead_letter"`). `router_in_doubt_total{channel,
   resolution}` counts the outcomes. A request that never left (refused, nothing written) is not
   in doubt: it is retried as any transient failure.
5. Content limits before any call (WhatsApp 4,096 characters, Instagram 1,000 bytes): over
   them, that channel FAILS (`content_limit`, the reason names the limit) and nothing is sent.
6. At the provider's pace (channels/pacing.py): each call waits for its slot of the sending
   account's rate, shared by every router through Redis, and of the recipient's pair limit.
   The slot is taken before the lease is claimed, so a long wait never holds a lease (a worker
   killed while waiting leaves no "outcome unknown" behind).
7. The provider's answer is classified by its error code (channels/base.py and the channel's
   table): transient failures are retried up to `router.max_attempts` with exponential backoff
   and jitter (the provider's Retry-After when longer), under the lease; a throttled answer
   releases the lease (the provider did not take the message), slows the pace (AIMD) and waits,
   spending no attempt, until `router.throttle_deadline_s` after its first throttle; a rejected
   answer fails the channel at once; an account answer (an expired token, ...) pauses the
   channel in this process (channels/pause.py): its sends are held, under the engine's
   `held()` so that they do not starve the other channel, until a probe goes through.
   Then SENT (with the provider's id) or FAILED goes to `message_status_updates`, FAILED with
   `details` {reason, attempts, provider_code, error_class} (absent ones left out); status
   updates are produced with `fallback=True`, so they are parked in Redis while Kafka's breaker
   is open.
8. If any channel failed, the ORIGINAL record (bytes and key unchanged) goes to the DLQ once, with
   the per-channel reasons in `dlq.reason` and, from a provider's answer, `dlq.provider_code`
   and `dlq.error_class`.

Cancellation (a revoked partition, a shutdown past its deadline): a send cancelled while no
request is under way releases its lease at once (the message was not sent; the next owner sends
it), unless an earlier attempt is still in doubt. One cancelled mid-request waits for that
request's answer, bounded by the channel's timeout (channels/http.py finishes it and delivers the
cancel at the next await), and records it (marked sent, or released) before the cancellation
goes on. A send left in doubt (cancelled a second time mid-request, or stopped or revoked while
it waits for the provider's word) expires its lease at once, so the next owner's claim finds it
ORPHANED and waits for the provider's word in its turn; nothing is stranded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from miniopy_async.error import S3Error

from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.channels import build_adapters
from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.http import RequestCancelledError
from chat4all_workers.channels.pacing import Pacer, PaceSettings
from chat4all_workers.channels.pause import ChannelPause, PauseChange
from chat4all_workers.consuming import consume, dead_letter_record
from chat4all_workers.delivery.markers import Claim, Kind, Marker, SendMarkers, State, marker_key
from chat4all_workers.delivery.provider_index import MessageRef, ProviderIndex
from chat4all_workers.errors import (
    AccountError,
    InvalidRecordError,
    PermanentError,
    ProviderError,
    ProviderRejectedError,
    RetryableError,
    ThrottleDeadlineError,
    ThrottledError,
    TransientProviderError,
)
from chat4all_workers.formats.message import Message, parse_message
from chat4all_workers.kafka.consumer import held, wait_unless_handed_back
from chat4all_workers.kafka.producer import OutgoingRecord
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.observability.logging import log_context
from chat4all_workers.observability.metrics import total
from chat4all_workers.resources import TRANSIENT_ERRORS, Need
from chat4all_workers.role import RoleContext, RoleReport, RoleSpec, outlast_outages

log = logging.getLogger(__name__)


class _UnknownOutcomeError(PermanentError):
    error_type = "delivery_unknown"


class FileUnavailableError(PermanentError):
    """A file message whose file is not COMPLETED, or whose object is missing: nothing sent."""

    error_type = "file_unavailable"


# The provider's answers a progress line shows per channel (channel_requests_total outcomes).
_REPORTED_OUTCOMES = ("sent", "throttled", "paused")


class _GivenUpError(PermanentError):
    """This record gave up on the channel before (its `failed:` marker): FAILED again, the same
    error type, nothing sent."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type or PermanentError.error_type


# In-doubt resolutions (`router_in_doubt_total{channel,resolution}`).
_IN_DOUBT = ("confirmed", "resent", "dead_lettered", "exhausted", "handed_back")
# Polling the marker for the provider's word: soon after the doubt arose (a status webhook
# usually follows the provider's acceptance within a second), then at most this often.
_VERDICT_POLL_FIRST_S = 0.05
_VERDICT_POLL_CAP_S = 1.0


# A send's lease is released, or its answer recorded, on the way out within this long.
_SETTLE_S = 2.0


@dataclass(frozen=True)
class _ChannelFailure:
    channel: str
    error: PermanentError | RetryableError
    attempts: int

    @property
    def provider(self) -> ProviderError | None:
        """The provider's answer behind the failure (a throttle deadline's last throttle)."""
        for error in (self.error, self.error.__cause__):
            if isinstance(error, ProviderError):
                return error
        return None

    def details(self) -> dict[str, Any]:
        """FAILED status details: reason, attempts, provider_code, error_class (absent omitted)."""
        details: dict[str, Any] = {"reason": str(self.error)}
        if self.attempts:
            details["attempts"] = self.attempts
        if (provider := self.provider) is not None:
            if provider.provider_code is not None:
                details["provider_code"] = provider.provider_code
            details["error_class"] = provider.error_class
        return details


@dataclass
class _Lane:
    """One channel as this router sends to it: the adapter, its pace, its pause."""

    adapter: ChannelAdapter
    pacer: Pacer
    pause: ChannelPause
    timeout_s: float
    throttled_at: float | None = None  # the last throttled answer, while throttling lasts


@dataclass
class _Lease:
    """The dedup lease of one send; `settled` once it was marked sent, released, given up on
    or abandoned (in doubt, to the next owner). `sent_as`: the provider took it, the mark is on
    its way."""

    key: str
    value: str
    settled: bool = False
    sent_as: str | None = None
    in_doubt: bool = False  # a request may have reached the provider, its verdict not known yet


class _Verdict(enum.Enum):
    """How a claimed send ended, as far as the channel's state cares."""

    SENT = "sent"  # accepted: the account works
    REJECTED = "rejected"  # refused this message: the account works
    THROTTLED = "throttled"  # too fast: the account works; wait and send again
    ACCOUNT = "account"  # the account does not work: pause, hold, send again
    HELD = "held"  # the channel paused while this send waited: nothing sent, hold it
    OTHER = "other"  # done without a verdict on the account (transient, duplicate, busy)


@dataclass
class _Send:
    """One (message, channel) on its way: what survives its throttled and paused rounds."""

    message: Message
    channel: str
    lane: _Lane
    key: str
    origin: str  # the record's "{topic}:{partition}:{offset}", for `failed:` markers
    outbound: OutboundMessage
    failures: list[_ChannelFailure]
    throttles: int = 0
    throttled_since: float | None = None
    last_error: ThrottledError | AccountError | None = field(default=None, repr=False)


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
        # Instagram's read receipts name only the provider's id: remembered when a send is
        # marked done (riding the markers' pipeline).
        self.index = ProviderIndex(
            self.redis,
            key=ctx.resources.redis_key,
            ttl_s=self.settings.webhooks.provider_index_ttl_s,
            pipe=self.markers.pipe,
        )
        self.lanes = {name: self._lane(adapter) for name, adapter in adapters.items()}
        for channel in self.lanes:  # every series from the start: increase() sees the first
            for resolution in _IN_DOUBT:
                labels = {"channel": channel, "resolution": resolution}
                ctx.metrics.router_in_doubt.add(labels, 0)
        ctx.publish("channels", self.describe_channels)

    def _lane(self, adapter: ChannelAdapter) -> _Lane:
        section = getattr(self.settings, adapter.name)
        r = self.settings.router
        pace = PaceSettings(
            max_rate_per_s=section.max_rate_per_s,
            pair_burst=section.pair_burst,
            pair_interval_s=section.pair_interval_s,
            recovery_s=r.pacing_recovery_s,
        )
        pacer = Pacer(
            self.redis,
            account_key=self.ctx.resources.redis_key(f"pace:{adapter.name}:{adapter.account}"),
            settings=pace,
            sleep=self._wait,
            hold=held,
        )
        pause = ChannelPause(
            adapter.name,
            probe_base_s=r.pause_probe_base_s,
            probe_cap_s=r.pause_probe_cap_s,
            on_change=self._paused_gauge,
        )
        return _Lane(adapter, pacer, pause, timeout_s=section.timeout_s)

    def describe_channels(self) -> dict[str, Any]:
        """The `channels` section of /readyz: each channel active or paused, and why."""
        return {name: lane.pause.stats() for name, lane in self.lanes.items()}

    def report(self) -> RoleReport:
        """For the log's progress lines: per channel, the provider's answers so far (sent,
        throttled, paused: `channel_requests_total`), its state and the sends it holds."""
        requests = self.ctx.metrics.channel_requests
        counts: dict[str, int] = {}
        state: dict[str, Any] = {}
        for name, lane in self.lanes.items():
            for outcome in _REPORTED_OUTCOMES:
                counts[f"{name}_{outcome}"] = total(requests, channel=name, outcome=outcome)
            state[name] = "paused" if lane.pause.paused else "active"
            state[f"{name}_held"] = lane.pause.held
        return RoleReport(counts=counts, state=state)

    def close(self) -> None:
        """The process stops: sends held by a paused channel give their records back."""
        for lane in self.lanes.values():
            lane.pause.close()

    async def handle(self, record: ConsumedRecord) -> None:
        message = parse_message(record.value, self.settings.router.all_channels)
        origin = f"{record.topic}:{record.partition}:{record.offset}"
        with log_context(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            user_id=message.sender_id,
        ):
            outbound = await self._outbound(message)
            failures: list[_ChannelFailure] = []
            if len(message.channels) == 1:  # the common case: nothing to run side by side
                await self._deliver(message, message.channels[0], outbound, origin, failures)
                if failures:
                    await self._dead_letter(record, failures)
                return
            # gather, not a task group: one channel's trouble must not cancel the other's send
            # halfway (a cancelled send may have reached the provider without being marked).
            results = await asyncio.gather(
                *(self._deliver(message, c, outbound, origin, failures) for c in message.channels),
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
                outbound = OutboundMessage(
                    message_id=message.message_id,
                    conversation_id=message.conversation_id,
                    recipient=recipient,
                    kind="file" if message.kind == "file" else "text",
                    text=message.content,
                    document_url=document_url,
                    filename=filename,
                    mime_type=mime_type,
                )
                try:
                    self.adapters[channel].check_content(outbound)
                    prepared[channel] = outbound
                except PermanentError as exc:  # over the channel's limit: no call at all
                    prepared[channel] = exc
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
        origin: str,
        failures: list[_ChannelFailure],
    ) -> None:
        prepared = outbound[channel]
        if isinstance(prepared, PermanentError):
            await self._failed(message, _ChannelFailure(channel, prepared, 0), failures)
            return
        lane = self.lanes[channel]
        key = self.ctx.resources.redis_key(marker_key(message.message_id, channel))
        send = _Send(message, channel, lane, key, origin, prepared, failures)
        if lane.pacer.enabled:
            # A redelivered message already sent (or being sent, or given up on) waits for no
            # slot of the pace.
            seen = await self.markers.peek(key, origin)
            if seen is not None:
                await self._not_ours(send, seen)
                return
        while True:
            probe = await self._channel_turn(lane)
            try:
                verdict = await self._round(send, probe=probe)
            except BaseException:
                if probe:
                    lane.pause.probe_done()
                raise
            if probe:
                self._settle_probe(send, verdict)
            if verdict is _Verdict.THROTTLED:
                if await self._after_throttle(send):
                    continue
                return
            if verdict is _Verdict.ACCOUNT:
                if not probe:
                    assert send.last_error is not None
                    error = send.last_error
                    lane.pause.pause(str(error), label=_label(error), probe=False)
                continue  # held by the pause at the top, until a probe goes through
            if verdict is _Verdict.HELD:
                continue
            return

    async def _round(self, send: _Send, *, probe: bool) -> _Verdict:
        """Wait for a slot, claim the send, and try it (transient failures retried under the
        lease); the verdict says what the channel learned."""
        lane = send.lane
        waited = await lane.pacer.acquire(send.outbound.recipient, wanted=_wanted(lane, probe))
        if waited is None or (lane.pause.paused and not probe):
            return _Verdict.HELD  # the channel paused while it waited for its slot
        if lane.pacer.enabled:
            self.ctx.metrics.channel_pacing_wait.observe({"channel": send.channel}, waited)
        claim = await self.markers.claim(send.key, send.origin)
        if claim.state is not State.CLAIMED and claim.state is not State.ORPHANED:
            await self._not_ours(send, claim)
            return _Verdict.OTHER
        # An orphaned lease: a worker stopped mid-send, so the provider may have it. Ours now,
        # in doubt until the provider's word comes or the window closes.
        orphaned = claim.state is State.ORPHANED
        lease = _Lease(send.key, claim.lease, in_doubt=orphaned)
        try:
            return await self._attempts(send, lease, probe=probe, orphaned=orphaned)
        except BaseException:
            await self._settle_on_the_way_out(send, lease)
            raise

    async def _attempts(
        self, send: _Send, lease: _Lease, *, probe: bool, orphaned: bool
    ) -> _Verdict:
        r = self.settings.router
        lane, channel = send.lane, send.channel
        attempts = 0
        slot_taken = True  # the round's slot, for the first attempt
        if orphaned:
            cause = "a worker stopped mid-send"
            resolved = await self._settle_doubt(send, lease, attempts=0, cause=cause, error=None)
            if resolved is not None:
                return resolved
            slot_taken = False  # the window took a while: a slot of the pace now
        while True:
            if not slot_taken:
                # A retry is a call too: it waits for a slot.
                waited = await lane.pacer.acquire(
                    send.outbound.recipient, wanted=_wanted(lane, probe)
                )
                if waited is None or (lane.pause.paused and not probe):
                    await self._release(lease)  # not taken by the provider: the record tries again
                    return _Verdict.HELD
                if not await self._renew(send, lease, attempts):
                    return _Verdict.SENT if lease.sent_as is not None else _Verdict.OTHER
            slot_taken = False
            attempts += 1
            try:
                # Cancelled mid-request, the HTTP client still finishes the request and hands
                # back its answer; the cancellation comes at the next await, and is settled
                # (marked sent, released, left in doubt) on the way out (_round).
                result = await lane.adapter.send(send.outbound)
            except RequestCancelledError:
                lease.in_doubt = True  # cancelled twice: the answer is unknown
                raise
            except TransientProviderError as exc:
                self._requests(channel, "transient")
                if exc.in_doubt:  # written, then no answer: the provider may have it
                    lease.in_doubt = True
                    resolved = await self._settle_doubt(
                        send, lease, attempts=attempts, cause=str(exc), error=exc
                    )
                    if resolved is not None:
                        return resolved
                    continue  # silent for the whole window: sent again, no further backoff
                if attempts >= r.max_attempts:
                    log.warning("%s send failed after %d attempt(s): %s", channel, attempts, exc)
                    return await self._give_up(send, lease, exc, attempts)
                delay = backoff_delay_s(attempts - 1, base_s=r.retry_base_s, cap_s=r.retry_cap_s)
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, r.retry_cap_s))
                log.info(
                    "%s attempt %d failed (%s); retrying in %.2fs", channel, attempts, exc, delay
                )
                await self._wait(delay)
                continue
            except ThrottledError as exc:
                self._requests(channel, "throttled")
                await self._release(lease)
                send.last_error = exc
                return _Verdict.THROTTLED
            except AccountError as exc:
                self._requests(channel, "paused")
                await self._release(lease)
                send.last_error = exc
                return _Verdict.ACCOUNT
            except ProviderRejectedError as exc:
                self._requests(channel, "rejected")
                await self._give_up(send, lease, exc, attempts)
                return _Verdict.REJECTED
            self._requests(channel, "sent")
            await self._mark_sent(send, lease, result.provider_message_id)
            await self._emit(
                send.message, channel, "SENT", {"provider_message_id": result.provider_message_id}
            )
            self._count(channel, "sent")
            self._calm(lane)
            return _Verdict.SENT

    # -- in doubt: the provider's word --------------------------------------------------------

    async def _settle_doubt(
        self,
        send: _Send,
        lease: _Lease,
        *,
        attempts: int,
        cause: str,
        error: TransientProviderError | None,
    ) -> _Verdict | None:
        """A send in doubt waits for the provider's word: SENT when it came; when the window
        closed silent, None to send it again, or the channel given up on (dead_letter mode,
        or no attempt left)."""
        r, channel = self.settings.router, send.channel
        log.info(
            "%s send in doubt (%s); waiting up to %gs for the provider's word",
            channel, cause, r.in_doubt_window_s,
        )  # fmt: skip
        provider_message_id = await self._await_verdict(send, lease)
        if provider_message_id is not None:
            lease.settled = True  # the marker says sent: (the webhooks role wrote it)
            self._in_doubt(channel, "confirmed")
            log.info("%s send in doubt confirmed by the provider: %s", channel, provider_message_id)
            details = {"provider_message_id": provider_message_id}
            await self._emit(send.message, channel, "SENT", details)
            self._count(channel, "sent")
            return _Verdict.SENT
        lease.in_doubt = False  # silent for the whole window: the provider does not have it
        window = (
            f"no word from the provider within router.in_doubt_window_s ({r.in_doubt_window_s:g}s)"
        )
        if r.on_unknown_outcome == "dead_letter":
            unknown = _UnknownOutcomeError(f"{cause}, and {window}")
            verdict = await self._give_up(send, lease, unknown, max(attempts, 1))
            self._in_doubt(channel, "confirmed" if verdict is _Verdict.SENT else "dead_lettered")
            return verdict
        if error is not None and attempts >= r.max_attempts:  # (an orphan has an attempt left)
            log.warning(
                "%s send failed after %d attempt(s): %s; %s", channel, attempts, error, window
            )
            verdict = await self._give_up(send, lease, error, attempts)
            self._in_doubt(channel, "confirmed" if verdict is _Verdict.SENT else "exhausted")
            return verdict
        self._in_doubt(channel, "resent")
        log.warning("%s send in doubt (%s): %s; sending it again", channel, cause, window)
        return None

    async def _await_verdict(self, send: _Send, lease: _Lease) -> str | None:
        """The provider's message id once the marker says `sent:`, or None once
        `router.in_doubt_window_s` passed without it. Holds back only this conversation
        (`held()`); keeps the lease alive; hands the record back (RetryableError) when the
        process stops or the partition is revoked.

        Polled, not notified: sends in doubt are rare (a crash, a timeout), a poll is one GET
        riding the markers' auto-pipeline, and a notification (pub/sub from the webhooks role)
        would need a subscription per process and a poll anyway for one published while this
        process was not listening."""
        window_s = self.settings.router.in_doubt_window_s
        started = time.monotonic()
        renew_at = started + self.markers.lease_s / 3
        delay = _VERDICT_POLL_FIRST_S
        async with held():
            while True:
                marker = await self.markers.read(lease.key)
                if marker.kind is Kind.SENT:
                    return marker.provider_message_id
                if marker.value != lease.value:  # not ours any more (expired, taken over)
                    lease.settled = True
                    raise RetryableError("the send lease changed hands while in doubt")
                now = time.monotonic()
                if now - started >= window_s:
                    return None
                if now >= renew_at:
                    renewed = await self.markers.renew(lease.key, lease.value)
                    if renewed is None:
                        continue  # changed meanwhile: read it again
                    lease.value, renew_at = renewed, now + self.markers.lease_s / 3
                pause = min(delay, window_s - (now - started), renew_at - now)
                if self.ctx.stopping.is_set() or await wait_unless_handed_back(pause):
                    raise RetryableError("handing the record back while a send is in doubt")
                delay = min(delay * 2, _VERDICT_POLL_CAP_S)

    def _in_doubt(self, channel: str, resolution: str) -> None:
        self.ctx.metrics.router_in_doubt.inc({"channel": channel, "resolution": resolution})

    # -- the channel's state ------------------------------------------------------------------

    async def _channel_turn(self, lane: _Lane) -> bool:
        """Wait while the channel is paused (held: not counted against kafka.max_in_flight);
        True when this send is the probe."""
        if not lane.pause.paused:
            return False
        lane.pause.held += 1
        try:
            async with held():
                return await lane.pause.wait_turn()
        finally:
            lane.pause.held -= 1

    def _settle_probe(self, send: _Send, verdict: _Verdict) -> None:
        pause = send.lane.pause
        if verdict is _Verdict.ACCOUNT:
            assert send.last_error is not None
            pause.pause(str(send.last_error), label=_label(send.last_error), probe=True)
        elif verdict in (_Verdict.SENT, _Verdict.REJECTED, _Verdict.THROTTLED):
            pause.resume()
        else:
            pause.probe_done()

    async def _after_throttle(self, send: _Send) -> bool:
        """After a throttled answer: slow the pace, wait; False once past the deadline."""
        r = self.settings.router
        exc = send.last_error
        assert isinstance(exc, ThrottledError)
        lane, now = send.lane, time.monotonic()
        if send.throttled_since is None:
            send.throttled_since = now
        if now - send.throttled_since >= r.throttle_deadline_s:
            error = ThrottleDeadlineError(
                f"still throttled after {now - send.throttled_since:.1f}s "
                f"(router.throttle_deadline_s = {r.throttle_deadline_s:g}): {exc}"
            )
            error.__cause__ = exc
            await self._give_up(send, None, error, send.throttles)
            return False
        throttle = await lane.pacer.throttled(
            send.outbound.recipient, pair=exc.pair, retry_after_s=exc.retry_after_s
        )
        if lane.throttled_at is None:
            log.warning(
                "%s throttles sends (%s)%s; waiting for its pace, no attempt spent",
                send.channel,
                exc,
                f"; rate now {throttle.rate_per_s:.1f}/s" if throttle.rate_per_s else "",
            )
        lane.throttled_at = now
        delay = backoff_delay_s(send.throttles, base_s=r.retry_base_s, cap_s=r.retry_cap_s)
        if exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        send.throttles += 1
        remaining = r.throttle_deadline_s - (now - send.throttled_since)
        async with held():
            await self._wait(min(delay, remaining))
        return True

    def _calm(self, lane: _Lane) -> None:
        """A send went through: once no throttle came for a recovery period, say so once."""
        if lane.throttled_at is None:
            return
        quiet = time.monotonic() - lane.throttled_at
        if quiet >= self.settings.router.pacing_recovery_s:
            log.info("%s: no throttled answer for %.0fs", lane.adapter.name, quiet)
            lane.throttled_at = None

    def _paused_gauge(self, change: PauseChange) -> None:
        labels = {"channel": change.channel, "reason": change.reason}
        self.ctx.metrics.channel_paused.set(labels, 1 if change.paused else 0)

    # -- waiting, and the lease ---------------------------------------------------------------

    async def _wait(self, delay_s: float) -> None:
        """Sleep, or hand the record back (RetryableError) once the process stops."""
        if self.ctx.stopping.is_set():
            raise RetryableError("the process is stopping; handing the record back")
        if delay_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self.ctx.stopping.wait()
            raise RetryableError("the process is stopping; handing the record back")

    async def _not_ours(self, send: _Send, claim: Claim) -> None:
        """Sent before (a redelivery: say so again, harmlessly, send nothing), given up on by
        this record before (FAILED again, send nothing), or another worker's live lease (wait:
        a retry of the record)."""
        if claim.state is State.SENT:
            if claim.foreign:
                # Not our format: the platform's original router handled it (docs/migrating.md).
                log.info("%s: dedup marker written by another router; read as sent", send.channel)
                details: dict[str, Any] = {"provider_message_id": None, "dedup_marker": "foreign"}
            else:
                details = {"provider_message_id": claim.provider_message_id}
            await self._emit(send.message, send.channel, "SENT", details)
            self._count(send.channel, "duplicate")
            return
        if claim.state is State.GIVEN_UP:
            reason = (
                f"given up on by an earlier delivery of this record ({claim.error_type}); "
                "nothing sent again"
            )
            await self._fail(send, _GivenUpError(reason, error_type=claim.error_type), 0)
            return
        raise RetryableError(
            "another worker is sending this message",
            retry_after_s=max(0.5, claim.retry_after_s),
        )

    async def _mark_sent(self, send: _Send, lease: _Lease, provider_message_id: str) -> None:
        # The provider has it: record that through a Redis outage, or a redelivery would find
        # an expired lease and wait for the provider's word to learn it.
        lease.sent_as = provider_message_id
        await outlast_outages(
            self.ctx, lambda: self._record_sent(send, lease), what="marking the send done"
        )
        lease.settled = True

    async def _record_sent(self, send: _Send, lease: _Lease) -> None:
        assert lease.sent_as is not None
        await self.markers.mark_sent(lease.key, lease.sent_as)
        if send.channel == "instagram":  # its read receipts name only the mid
            ref = MessageRef(send.message.message_id, send.message.conversation_id)
            await self.index.remember(send.channel, [(lease.sent_as, ref)])

    async def _release(self, lease: _Lease) -> None:
        """Forget a send the provider did not take, so that this record tries it again."""
        await outlast_outages(
            self.ctx,
            lambda: self.markers.release(lease.key, lease.value),
            what="releasing the lease",
        )
        lease.settled = True

    async def _renew(self, send: _Send, lease: _Lease, attempts: int) -> bool:
        """Renew the lease before another attempt; False when it is not ours any more: the
        provider's word made it `sent:` (SENT emitted), or another worker has it (FAILED)."""
        renewed = await self.markers.renew(lease.key, lease.value)
        if renewed is not None:
            lease.value = renewed
            return True
        lease.settled = True
        marker = await self.markers.read(lease.key)
        if marker.kind is Kind.SENT:
            lease.sent_as = marker.provider_message_id
            details = {"provider_message_id": marker.provider_message_id}
            await self._emit(send.message, send.channel, "SENT", details)
            self._count(send.channel, "sent")
            return False
        error = PermanentError(f"{send.channel}: lost the send lease to another worker")
        await self._fail(send, error, attempts)
        return False

    async def _give_up(
        self,
        send: _Send,
        lease: _Lease | None,
        error: PermanentError | RetryableError,
        attempts: int,
    ) -> _Verdict:
        """FAILED for this channel, and its marker says so (`failed:`, never deleted: a
        redelivery of this record must not send it). Should the provider's word have come
        first (`sent:`), the send went through after all: SENT instead."""
        error_type = error.error_type if isinstance(error, PermanentError) else "retries_exhausted"
        key = send.key if lease is None else lease.key
        value = None if lease is None else lease.value

        async def give_up() -> Marker:
            return await self.markers.give_up(key, value, error_type=error_type, origin=send.origin)

        marker = await outlast_outages(self.ctx, give_up, what="giving up on the send")
        if lease is not None:
            lease.settled = True
        if marker.kind is Kind.SENT:
            details = {"provider_message_id": marker.provider_message_id}
            await self._emit(send.message, send.channel, "SENT", details)
            self._count(send.channel, "sent")
            return _Verdict.SENT
        await self._fail(send, error, attempts)
        return _Verdict.OTHER

    async def _settle_on_the_way_out(self, send: _Send, lease: _Lease) -> None:
        """Cancelled, stopping, an outage, while the lease is ours: mark it sent if the provider
        took it; in doubt, expire it now for the next owner to wait for the provider's word;
        else release it. Time-boxed, best effort: a lease left behind expires, and the next
        owner treats it as in doubt."""
        if lease.settled:
            return
        lease.settled = True
        try:
            async with asyncio.timeout(_SETTLE_S):
                if lease.sent_as is not None:
                    await self._record_sent(send, lease)
                elif lease.in_doubt:
                    self._in_doubt(send.channel, "handed_back")
                    await self.markers.abandon(lease.key, lease.value)
                else:
                    await self.markers.release(lease.key, lease.value)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not settle the send lease %s on the way out: %r", lease.key, exc)

    # -- what comes out -----------------------------------------------------------------------

    async def _fail(
        self, send: _Send, error: PermanentError | RetryableError, attempts: int
    ) -> None:
        failure = _ChannelFailure(send.channel, error, attempts)
        await self._failed(send.message, failure, send.failures)

    async def _failed(
        self, message: Message, failure: _ChannelFailure, failures: list[_ChannelFailure]
    ) -> None:
        failures.append(failure)
        await self._emit(message, failure.channel, "FAILED", failure.details())
        self._count(failure.channel, "failed")

    def _requests(self, channel: str, outcome: str) -> None:
        self.ctx.metrics.channel_requests.inc({"channel": channel, "outcome": outcome})

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
        headers: list[tuple[str, bytes]] = []
        provider = next((p for f in failures if (p := f.provider) is not None), None)
        if provider is not None:
            if provider.provider_code is not None:
                headers.append(("dlq.provider_code", str(provider.provider_code).encode()))
            headers.append(("dlq.error_class", provider.error_class.encode()))
        await dead_letter_record(
            self.ctx,
            record,
            reason=reason,
            error_type=error_type,
            attempts=max(f.attempts for f in failures),
            extra_headers=headers,
        )

    def _count(self, channel: str, outcome: str) -> None:
        self.ctx.metrics.messages_processed.inc(
            {"role": "router", "channel": channel, "outcome": outcome}
        )


def _wanted(lane: _Lane, probe: bool) -> Callable[[], bool]:
    """Whether a send waiting for its slot still wants it: not once its channel paused (unless
    it is the probe)."""
    return (lambda: True) if probe else (lambda: not lane.pause.paused)


def _label(error: ProviderError) -> str:
    """The `reason` label of channel_paused: the provider's code, low cardinality."""
    return str(error.provider_code) if error.provider_code is not None else "http"


async def run(ctx: RoleContext) -> None:
    adapters = build_adapters(ctx.settings, ctx.resources.http_client())
    router = Router(ctx, adapters)

    async def close_on_stop() -> None:
        await ctx.stopping.wait()
        router.close()

    try:
        async with asyncio.TaskGroup() as tasks:
            closer = tasks.create_task(close_on_stop())
            try:
                await consume(
                    ctx,
                    topic=ctx.settings.topics.message_processing,
                    handler=router.handle,
                    report=router.report,
                )
            finally:
                closer.cancel()
    finally:
        for adapter in adapters.values():
            await adapter.aclose()


ROLE = RoleSpec(
    name="router",
    needs=frozenset({Need.KAFKA, Need.REDIS, Need.HTTP, Need.POSTGRES, Need.S3}),
    run=run,
)
