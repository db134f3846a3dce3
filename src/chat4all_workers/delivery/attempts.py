"""The attempts of one claimed send, under its lease: call the provider, and act on its answer.

- accepted: marked sent (delivery/lease.py), SENT;
- transient (a 5xx, codes 1/2/131000, no answer): retried up to `router.max_attempts` with
  exponential backoff and jitter (the provider's Retry-After when longer), each retry waiting for
  its slot of the pace and renewing the lease; one whose request was written and then got no
  answer is in doubt (delivery/doubt.py) before anything is sent again;
- throttled: the lease is released (the provider did not take the message) and the router
  waits for the pace (delivery/lanes.py), spending no attempt;
- account: the lease is released and the channel pauses (delivery/lanes.py);
- rejected: FAILED at once, the marker given up on.

Cancelled mid-request, the HTTP client still finishes the request and hands back its answer;
the cancellation comes at the next await, and the lease is settled (marked sent, released, left
in doubt) on the way out by the router.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass

from chat4all_workers.backoff import retry_delay_s
from chat4all_workers.channels.http import RequestCancelledError
from chat4all_workers.delivery.doubt import Doubts
from chat4all_workers.delivery.failures import LeaseLostError, RetriesExhaustedError
from chat4all_workers.delivery.lease import Lease, Leases
from chat4all_workers.delivery.markers import Kind
from chat4all_workers.delivery.outcomes import Outcomes
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
    WindowClosedError,
)
from chat4all_workers.frozen import frozen
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.waiting import Wait

log = logging.getLogger(__name__)


@frozen
class AttemptSettings:
    max_attempts: int
    retry_base_s: float
    retry_cap_s: float


@dataclass(eq=False, slots=True)
class Attempts:
    """The attempts of every send of the router; one per router, shared by its lanes."""

    leases: Leases
    outcomes: Outcomes
    doubts: Doubts
    windows: Windows
    _: KW_ONLY
    settings: AttemptSettings
    metrics: Metrics
    wait: Wait

    async def run(self, send: Send, lease: Lease, *, probe: bool, orphaned: bool) -> Verdict:
        """Try the send under `lease` until it ends; the verdict says what the channel learned.
        An orphaned lease (a worker stopped mid-send) first waits for the provider's word."""
        attempts = send.prior_attempts
        if attempts >= self.settings.max_attempts:  # a copy with no attempt left
            exhausted = RetriesExhaustedError(
                f"{attempts} attempt(s) spent before this copy (router.max_attempts = "
                f"{self.settings.max_attempts})"
            )
            return await self.outcomes.give_up(send, lease, exhausted, attempts)
        slot_taken = True  # the round's slot, for the first attempt
        if orphaned:
            cause = "a worker stopped mid-send"
            resolved = await self.doubts.settle(send, lease, attempts=0, cause=cause, error=None)
            if resolved is not None:
                return resolved
            slot_taken = False  # the window took a while: a slot of the pace now
        while True:
            if not slot_taken:
                ended = await self._next_slot(send, lease, probe=probe, attempts=attempts)
                if ended is not None:
                    return ended
            slot_taken = False
            attempts += 1
            sent_at = time.time()
            try:
                result = await send.lane.adapter.send(send.outbound)
            except RequestCancelledError:
                lease.in_doubt = True  # cancelled twice: the answer is unknown
                raise
            except TransientProviderError as exc:
                self.outcomes.request(send, "in_doubt" if exc.in_doubt else "transient")
                verdict = await self._transient(send, lease, exc, attempts)
                if verdict is None:
                    continue
                return verdict
            except ThrottledError as exc:
                return await self._not_taken(send, lease, exc, "throttled", Verdict.THROTTLED)
            except AccountError as exc:
                return await self._not_taken(send, lease, exc, "paused", Verdict.ACCOUNT)
            except ProviderRejectedError as exc:
                self.outcomes.request(send, "rejected")
                if isinstance(exc, WindowClosedError):  # remembered: the next ones cost no call
                    account, user = send.lane.account.provider_id, send.outbound.recipient
                    await self.windows.close(send.channel, account, user, sent_at_s=sent_at)
                await self.outcomes.give_up(send, lease, exc, attempts)
                return Verdict.REJECTED
            self.outcomes.request(send, "sent")
            pid = result.provider_message_id
            # The mark and the SENT at once: both outlast an outage, and a redelivery finds
            # either (a `sent:` marker emits SENT again).
            marking = self.leases.mark_sent(lease, pid, channel=send.channel, ref=send.ref)
            try:
                await self.outcomes.sent(send, pid)
            except BaseException:
                marking.close()  # recorded on the way out (`settle_on_the_way_out`)
                raise
            await marking
            send.lane.calm()
            return Verdict.SENT

    async def _next_slot(
        self, send: Send, lease: Lease, *, probe: bool, attempts: int
    ) -> Verdict | None:
        """A retry is a call too: it waits for a slot, and renews the lease; a verdict when the
        send ended meanwhile (the channel paused, the provider's word came, the lease lost)."""
        lane = send.lane
        waited = await lane.slot(send.outbound, probe=probe)
        if waited is None or (lane.pause.paused and not probe):
            await self.leases.release(lease)  # not taken by the provider: the record tries again
            return Verdict.HELD
        marker = await self.leases.renew(lease)
        if marker is None:
            return None
        if marker.kind is Kind.SENT:
            await self.outcomes.sent(send, marker.provider_message_id)
            return Verdict.SENT
        error = LeaseLostError("lost the send lease to another worker")
        await self.outcomes.fail(send, error, attempts)
        return Verdict.OTHER

    async def _not_taken(
        self,
        send: Send,
        lease: Lease,
        exc: ThrottledError | AccountError,
        outcome: str,
        verdict: Verdict,
    ) -> Verdict:
        """Throttled, or the account refused: the provider did not take it; the lease goes."""
        self.outcomes.request(send, outcome)
        await self.leases.release(lease)
        send.last_error = exc
        return verdict

    async def _transient(
        self, send: Send, lease: Lease, exc: TransientProviderError, attempts: int
    ) -> Verdict | None:
        """A failed attempt: None to try again (after its backoff), else how the send ended."""
        settings, channel = self.settings, send.channel
        if exc.in_doubt:  # written, then no answer: the provider may have it
            lease.in_doubt = True
            # None: silent for the whole window: sent again, no further backoff
            return await self.doubts.settle(
                send, lease, attempts=attempts, cause=str(exc), error=exc
            )
        if attempts >= settings.max_attempts:
            log.warning("%s send failed after %d attempt(s): %s", channel, attempts, exc)
            return await self.outcomes.give_up(send, lease, exc, attempts)
        delay = retry_delay_s(
            attempts - 1,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            retry_after_s=exc.retry_after_s,
        )
        log.info("%s attempt %d failed (%s); retrying in %.2fs", channel, attempts, exc, delay)
        await self.wait(delay)
        return None
