"""The router: delivers each `message_processing` record to its channels, at most once each.

Per record (records of one conversation in order, conversations concurrently: the consumer
engine's keyed concurrency):

1. Validate against the wire format (formats/message.py): a tombstone, bad JSON, a missing or
   mistyped field, an unknown channel: straight to the DLQ as `invalid_record` with a reason
   naming each bad field, no retries, no sends.
2. What each channel is asked to send (delivery/outbound.py): a file link for a COMPLETED file,
   the channel's content limits, a recipient per channel; a channel that cannot be sent to
   FAILS alone, with nothing called. `all` expands to `router.all_channels`. The channels of one
   message are sent concurrently; a failure on one never holds back the other.
3. Per channel, at most once within `delivery.dedup_ttl_s` (24 h), however often Kafka redelivers:
   the send's dedup marker (delivery/markers.py) is claimed with a short lease and ends marked
   sent, released, given up on or in doubt (delivery/lease.py). A redelivered record that finds
   `sent:` re-emits SENT and sends nothing; one that finds another worker's live lease waits
   (the engine holds back only that conversation); one that finds its own `failed:` emits
   FAILED again. A send whose outcome is unknown waits for the provider's word
   (delivery/doubt.py). The marker's first look rides the window read's round trip: a send
   free to go at once (an unpaced account, not paused) asks for its claim there, released if
   the window refuses; a paced one reads the marker there.
4. From its account, at the provider's pace and through its pauses (delivery/accounts.py,
   delivery/lanes.py): the message's `account` (or the channel's default) picks the lane; an
   unknown or disabled account FAILS that channel with no call. Each call waits for its slot of
   the account's rate and of the recipient's pair limit, taken before the lease is claimed, so
   a long wait never holds a lease; an account-class answer pauses that account alone, whose
   sends are held until a probe goes through.
5. The attempts under the lease (delivery/attempts.py): the provider's answer, classified by its
   error code (meta/errors.py), decides: retried, waited for, paused, or failed.
6. SENT or FAILED goes to `message_status_updates` (delivery/outcomes.py); if any channel
   failed, the ORIGINAL record goes to the DLQ once, with every channel's reason
   (delivery/failures.py).

Cancellation (a revoked partition, a shutdown past its deadline): a send cancelled while no
request is under way releases its lease at once (the message was not sent; the next owner sends
it), unless an earlier attempt is still in doubt. One cancelled mid-request waits for that
request's answer (channels/http.py finishes it and delivers the cancel at the next await), and
records it before the cancellation goes on. A send left in doubt expires its lease at once, so
the next owner's claim finds it ORPHANED and waits for the provider's word in its turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import field
from typing import Any, ClassVar

from chat4all_workers.accounts.model import Account, Directory
from chat4all_workers.channels import build_adapter
from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.config import CHANNELS
from chat4all_workers.consuming import consume, dead_letter_record
from chat4all_workers.delivery.failures import ChannelFailure, GivenUpError, dead_letter_reason
from chat4all_workers.delivery.lanes import Lane
from chat4all_workers.delivery.lease import Lease
from chat4all_workers.delivery.markers import Asked, Claim, State, marker_key
from chat4all_workers.delivery.outbound import Prepared
from chat4all_workers.delivery.parts import Connect, Parts, RouterTuning, build_parts
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.formats.message import Message, parse_message
from chat4all_workers.formats.resend import History, history
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.observability.logging import log_context
from chat4all_workers.observability.metrics import total
from chat4all_workers.resources import Need
from chat4all_workers.role import RoleContext, RoleReport, RoleSpec

log = logging.getLogger(__name__)


@frozen(kw_only=True)
class RouterSettings:
    """`[router]`: how the router retries, waits and pauses."""

    SECTION: ClassVar[str] = "router"

    max_attempts: int = 3
    retry_base_s: float = 0.2
    retry_cap_s: float = 5.0
    all_channels: tuple[str, ...] = CHANNELS
    # A send whose outcome is unknown (a worker killed mid-send, a request timed out or reset
    # after it was written, a cancel that could not wait for the answer) waits up to this long
    # for the provider's word (a status webhook recorded in its dedup marker by the webhooks
    # role), holding back only its conversation: found, it is SENT and not sent again.
    in_doubt_window_s: float = 60.0
    # ... and when the window closes with the provider silent: "resend" sends it again (counted
    # as an attempt): a provider that acknowledges every message it takes with a webhook within
    # the window does not have one it stayed silent about. "dead_letter" keeps at-most-once
    # whatever the webhooks do: FAILED + DLQ `delivery_unknown`, for an operator to replay.
    on_unknown_outcome: str = field(
        default="resend", metadata={"choices": ("dead_letter", "resend")}
    )
    # A throttled send never spends an attempt; it waits for the pace and tries again until
    # this long after its first throttled answer, then FAILED (dlq.error_type throttle_deadline).
    throttle_deadline_s: float = 3600.0
    # After a throttled answer halves a channel's sending rate, the rate climbs back to the
    # channel's max_rate_per_s over this long (additive increase).
    pacing_recovery_s: float = 30.0
    # A paused channel (an account-class answer) lets one held send through as a probe after
    # this delay, doubling per failed probe up to the cap.
    pause_probe_base_s: float = 1.0
    pause_probe_cap_s: float = 60.0
    # Metrics carry an `account` label for at most this many accounts per process (the first
    # seen); the rest share `_other` (/readyz names every one).
    account_label_limit: int = 100


# What a send learned of its marker with its window read (Router._ahead): a claim asked for, the
# marker's GET, or nothing yet.
Ahead = Asked | asyncio.Future[Any] | None

# The provider's answers a progress line shows per channel (channel_requests_total outcomes).
_REPORTED_OUTCOMES = ("sent", "throttled", "paused")


class Router:
    """Orchestrates the parts (delivery/) for every record; holds no state of a send itself."""

    def __init__(self, ctx: RoleContext, parts: Parts, *, all_channels: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.parts = parts
        self.leases, self.outcomes, self.doubts = parts.leases, parts.outcomes, parts.doubts
        self.windows, self.attempts, self.outbound = parts.windows, parts.attempts, parts.outbound
        self.accounts = parts.accounts
        self.all_channels = all_channels
        ctx.publish("accounts", self.accounts.describe)
        ctx.publish("channels", self.accounts.channels)

    def report(self) -> RoleReport:
        """For the log's progress lines: per channel, the provider's answers so far (sent,
        throttled, paused: `channel_requests_total`), its accounts paused and the sends they
        hold."""
        requests = self.ctx.metrics.channel_requests
        counts: dict[str, int] = {}
        state: dict[str, Any] = {}
        channels = self.accounts.channels()
        for name in self.all_channels:
            for outcome in _REPORTED_OUTCOMES:
                counts[f"{name}_{outcome}"] = total(requests, channel=name, outcome=outcome)
            summary = channels.get(name, {})
            state[name] = summary.get("state", "active")  # active, partly (paused), paused
            state[f"{name}_held"] = sum(
                lane.pause.held for lane in self.accounts.lanes() if lane.channel == name
            )
            if summary.get("paused"):
                state[f"{name}_paused"] = ",".join(summary["paused"][:10])
        return RoleReport(counts=counts, state=state)

    def close(self) -> None:
        """The process stops: sends held by a paused account give their records back."""
        self.accounts.close()

    async def handle(self, record: ConsumedRecord) -> None:
        message = parse_message(record.value, self.all_channels)
        origin = f"{record.topic}:{record.partition}:{record.offset}"
        past = history(record)
        with log_context(
            message_id=message.message_id,
            conversation_id=message.conversation_id,
            user_id=message.sender_id,
        ):
            prepared = await self.outbound.prepare(message, origin=origin)
            failures: list[ChannelFailure] = []
            if len(message.channels) == 1:  # the common case: nothing to run side by side
                await self._deliver(message, message.channels[0], prepared, origin, failures, past)
            else:
                # gather, not a task group: one channel's trouble must not cancel the other's
                # send halfway (a cancelled send may have reached the provider unmarked).
                results = await asyncio.gather(
                    *(
                        self._deliver(message, c, prepared, origin, failures, past)
                        for c in message.channels
                    ),
                    return_exceptions=True,
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                for error in errors:
                    if not isinstance(error, RetryableError):
                        raise error  # a bug, or cancellation
                if errors:
                    raise errors[0]  # the engine retries the record; sent channels are deduplicated
            if failures:
                letter = dead_letter_reason(failures)
                await dead_letter_record(
                    self.ctx,
                    record,
                    reason=letter.reason,
                    error_type=letter.error_type,
                    attempts=letter.attempts,
                    extra_headers=letter.headers,
                )

    async def _deliver(
        self,
        message: Message,
        channel: str,
        prepared: Prepared,
        origin: str,
        failures: list[ChannelFailure],
        past: History,
    ) -> None:
        key = self.ctx.resources.redis_key(marker_key(message.message_id, channel))
        admitted = await self._admit(message, channel, prepared, key)
        if isinstance(admitted, PermanentError):
            await self.outcomes.failed(message, ChannelFailure(channel, admitted, 0), failures)
            return
        lane, outbound, ahead = admitted
        send = Send(message, channel, lane, key, origin, outbound, failures, past.attempts)
        if past.throttled_since is not None:  # the copy's throttle deadline runs from the first
            send.throttled_since = time.monotonic() - max(0.0, time.time() - past.throttled_since)
        asked = await self._after_window(send, ahead)
        if isinstance(asked, Claim):
            await self._not_ours(send, asked)
            return
        while True:
            probe = await lane.turn()
            if lane.retired is not None:  # disabled or removed while this send waited
                if probe:
                    lane.pause.probe_done()
                await self.outcomes.give_up(send, None, lane.retired, 0)
                return
            try:
                verdict = await self._round(send, probe=probe, asked=asked)
            except BaseException:
                if probe:
                    lane.pause.probe_done()
                raise
            asked = None
            # An account-class answer for a message the account was shown to send around: the
            # message's problem (the probe, if it was one, proved the account works).
            refused = lane.refused_again(send) if verdict is Verdict.ACCOUNT else None
            if probe:
                lane.settle_probe(Verdict.REJECTED if refused else verdict, send.last_error)
            if verdict is Verdict.THROTTLED:
                deadline = await lane.after_throttle(send)
                if deadline is None:
                    continue
                await self.outcomes.give_up(send, None, deadline, send.throttles)
                return
            if verdict is Verdict.ACCOUNT:
                if refused is not None:
                    await self.outcomes.give_up(send, None, refused, 1)
                    return
                if not probe:
                    lane.account_refused(send.last_error, probe=False)
                continue  # held by the pause at the top, until a probe goes through
            if verdict is Verdict.HELD:
                continue
            return

    async def _admit(
        self, message: Message, channel: str, prepared: Prepared, key: str
    ) -> tuple[Lane, OutboundMessage, Ahead] | PermanentError:
        """The account that sends it, what is sent, and the marker's first look (`_ahead`); or
        why nothing may be sent on this channel (no such account, a disabled one, the content,
        a closed window): no call."""
        lane = await self.accounts.lane(channel, message.account(channel))
        if isinstance(lane, PermanentError):
            return lane
        outbound = prepared[channel]
        if isinstance(outbound, PermanentError):
            return outbound
        ahead = self._ahead(lane, key)
        try:
            admitted = await self.windows.admit(
                channel, lane.account.provider_id, outbound, human_agent=message.human_agent
            )
        except BaseException:
            if isinstance(ahead, Asked):
                await self.leases.withdraw_on_the_way_out(ahead)
            raise
        if isinstance(admitted, PermanentError):
            if isinstance(ahead, Asked):
                await self.leases.withdraw(ahead)
            return admitted
        return lane, admitted, ahead

    async def _after_window(self, send: Send, ahead: Ahead) -> Asked | Claim | None:
        """What the first look leaves the send, now that its window let it go: the claim asked
        for, still wanted; a marker that says the send is not ours to make (a paced send's
        peek: a redelivered message already sent, being sent or given up on waits for no slot
        of the pace); or None, the claim to be asked in the send's turn."""
        lane = send.lane
        if isinstance(ahead, Asked):
            if _goes_at_once(lane):
                return ahead
            # The account paused or changed while the window was read: no lease held through
            # the wait; the claim is asked again when the send's turn comes.
            await self.leases.withdraw(ahead)
            ahead = None
        if not lane.paced:
            return None
        return await self.leases.markers.peek(send.key, send.origin, looked=ahead)

    def _ahead(self, lane: Lane, key: str) -> Ahead:
        """The marker's first look, issued now so that it rides the window read's round trip:
        a send free to go at once (an unpaced account, not paused) asks for its claim; a paced
        one reads the marker (its peek)."""
        if lane.paced:
            return self.leases.markers.look(key)
        return self.leases.markers.ask(key) if _goes_at_once(lane) else None

    async def _round(self, send: Send, *, probe: bool, asked: Asked | None = None) -> Verdict:
        """Wait for a slot, claim the send (`asked`: the claim asked for with the window read,
        in the first round of an unpaced account), and try it; the verdict says what the
        channel learned."""
        lane = send.lane
        waited = await lane.slot(send.outbound, probe=probe)
        if waited is None or (lane.pause.paused and not probe) or lane.retired is not None:
            if asked is not None:
                await self.leases.withdraw(asked)
            return Verdict.HELD  # the account paused (or was disabled) while it waited
        if lane.paced:
            self.ctx.metrics.channel_pacing_wait.observe({"channel": send.channel}, waited)
        claim = await self.leases.claim(send.key, send.origin, asked=asked)
        if claim.state is not State.CLAIMED and claim.state is not State.ORPHANED:
            await self._not_ours(send, claim)
            return Verdict.OTHER
        # An orphaned lease: a worker stopped mid-send, so the provider may have it. Ours now,
        # in doubt until the provider's word comes or the window closes.
        orphaned = claim.state is State.ORPHANED
        lease = Lease(send.key, claim.lease, in_doubt=orphaned)
        try:
            return await self.attempts.run(send, lease, probe=probe, orphaned=orphaned)
        except BaseException:
            handed_back = await self.leases.settle_on_the_way_out(
                lease, channel=send.channel, ref=send.ref
            )
            if handed_back:
                self.doubts.count(send.channel, "handed_back")
            raise

    async def _not_ours(self, send: Send, claim: Claim) -> None:
        """Sent before (a redelivery: say so again, harmlessly, send nothing), given up on by
        this record before (FAILED again, send nothing), or another worker's live lease (wait:
        a retry of the record)."""
        if claim.state is State.SENT:
            if claim.foreign:
                # Not our format: the platform's original router handled it (docs/migrating.md).
                log.info("%s: dedup marker written by another router; read as sent", send.channel)
                await self.outcomes.sent(send, None, outcome="duplicate", dedup_marker="foreign")
            else:
                await self.outcomes.sent(send, claim.provider_message_id, outcome="duplicate")
            return
        if claim.state is State.ENDED:
            # The provider failed this record's send later; the webhooks role ended it (a DLQ
            # record, or a copy published again): nothing more for this record to say.
            self.outcomes.count(send.channel, "duplicate")
            return
        if claim.state is State.GIVEN_UP:
            reason = (
                f"given up on by an earlier delivery of this record ({claim.error_type}); "
                "nothing sent again"
            )
            await self.outcomes.fail(send, GivenUpError(reason, error_type=claim.error_type), 0)
            return
        raise RetryableError(
            "another worker is sending this message",
            retry_after_s=max(0.5, claim.retry_after_s),
        )


def _goes_at_once(lane: Lane) -> bool:
    """A send on `lane` waits for nothing before its claim: no pace, no pause, not retired."""
    return not (lane.paced or lane.pause.paused or lane.retired is not None)


def build_router(
    ctx: RoleContext, *, directory: Directory | None = None, connect: Connect | None = None
) -> Router:
    """The router with its parts, over the context's resources: its accounts from `directory`
    (default: the process's), each sending through `connect(account)` (default: the real
    adapter over the process's HTTP client)."""
    own = ctx.settings.section(RouterSettings)
    tuning = RouterTuning(
        own.max_attempts,
        own.retry_base_s,
        own.retry_cap_s,
        own.in_doubt_window_s,
        own.on_unknown_outcome,
        own.throttle_deadline_s,
        own.pacing_recovery_s,
        own.pause_probe_base_s,
        own.pause_probe_cap_s,
        own.account_label_limit,
    )
    if directory is None:
        directory = ctx.resources.accounts()
    if connect is None:
        settings, http = ctx.settings, ctx.resources.http_client()

        def connect(account: Account) -> ChannelAdapter:
            return build_adapter(
                account.channel,
                settings,
                http,
                provider_id=account.provider_id,
                token=account.token,
            )

    parts = build_parts(ctx, directory, connect, tuning)
    return Router(ctx, parts, all_channels=own.all_channels)


async def run(ctx: RoleContext) -> None:
    router = build_router(ctx)

    async def close_on_stop() -> None:
        await ctx.stopping.wait()
        router.close()

    try:
        async with asyncio.TaskGroup() as tasks:
            closer = tasks.create_task(close_on_stop())
            following = tasks.create_task(router.accounts.follow())
            try:
                await consume(
                    ctx,
                    topic=ctx.settings.topics.message_processing,
                    handler=router.handle,
                    report=router.report,
                )
            finally:
                closer.cancel()
                following.cancel()
    finally:
        for lane in router.accounts.lanes():
            await lane.adapter.aclose()


ROLE = RoleSpec(
    name="router",
    needs=frozenset({Need.KAFKA, Need.REDIS, Need.HTTP, Need.POSTGRES, Need.S3, Need.ACCOUNTS}),
    run=run,
    settings=RouterSettings,
)
