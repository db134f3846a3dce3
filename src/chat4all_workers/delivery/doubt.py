"""Sends in doubt: a send whose outcome is unknown waits for the provider's word.

In doubt: an expired lease (a worker died mid-send), an attempt that timed out or was reset
after its request was written, a cancel that could not wait for the answer. The provider may or
may not have the message. The send waits, holding back only its conversation (`held()`), up to
`router.in_doubt_window_s` for the provider's word, which the webhooks role writes into the
marker from the provider's status webhooks: found, it is SENT with the provider's id and not
sent again; not found when the window closes, it is sent again (counted as an attempt;
`router.on_unknown_outcome = "resend"`, the default) or FAILED and dead-lettered as
`delivery_unknown` (`"dead_letter"`). `router_in_doubt_total{channel,resolution}` counts the
outcomes. A request that never left (refused, nothing written) is not in doubt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from chat4all_workers.delivery.failures import UnknownOutcomeError
from chat4all_workers.delivery.lease import Lease, Leases
from chat4all_workers.delivery.markers import Kind, Marker
from chat4all_workers.delivery.outcomes import Outcomes
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import RetryableError, TransientProviderError
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.held import held, wait_unless_handed_back
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.role import RoleContext

log = logging.getLogger(__name__)

# In-doubt resolutions (`router_in_doubt_total{channel,resolution}`).
RESOLUTIONS = ("confirmed", "resent", "dead_lettered", "exhausted", "handed_back")
# Polling the marker for the provider's word: soon after the doubt arose (a status webhook
# usually follows the provider's acceptance within a second), then at most this often.
_VERDICT_POLL_FIRST_S = 0.05
_VERDICT_POLL_CAP_S = 1.0


@frozen
class DoubtSettings:
    in_doubt_window_s: float
    on_unknown_outcome: str  # "resend" | "dead_letter"
    max_attempts: int


class Doubts:
    def __init__(
        self,
        ctx: RoleContext,
        leases: Leases,
        outcomes: Outcomes,
        *,
        settings: DoubtSettings,
        channels: Iterable[str],
    ) -> None:
        self._ctx = ctx
        self._leases = leases
        self._outcomes = outcomes
        self._settings = settings
        self._metrics: Metrics = ctx.metrics
        for channel in channels:  # every series from the start: increase() sees the first
            for resolution in RESOLUTIONS:
                labels = {"channel": channel, "resolution": resolution}
                self._metrics.router_in_doubt.add(labels, 0)

    def count(self, channel: str, resolution: str) -> None:
        self._metrics.router_in_doubt.inc({"channel": channel, "resolution": resolution})

    async def settle(
        self,
        send: Send,
        lease: Lease,
        *,
        attempts: int,
        cause: str,
        error: TransientProviderError | None,
    ) -> Verdict | None:
        """Wait for the provider's word: SENT when it came; when the window closed silent, None
        to send it again, or the channel given up on (dead_letter mode, or no attempt left)."""
        settings, channel = self._settings, send.channel
        log.info(
            "%s send in doubt (%s); waiting up to %gs for the provider's word",
            channel, cause, settings.in_doubt_window_s,
        )  # fmt: skip
        word = await self._await_verdict(lease)
        if word is not None and word.kind is Kind.FAILED:
            # The provider took it and failed it later: the webhooks role ended the send
            # (dead-lettered this record, or published it again to be sent once more).
            lease.settled = True
            self.count(channel, "confirmed")
            log.info("%s send in doubt failed by the provider later (%s)", channel, word.error_type)
            return Verdict.OTHER
        if word is not None:
            lease.settled = True  # the marker says sent: (the webhooks role wrote it)
            self.count(channel, "confirmed")
            pid = word.provider_message_id
            log.info("%s send in doubt confirmed by the provider: %s", channel, pid)
            await self._outcomes.sent(send, pid)
            return Verdict.SENT
        lease.in_doubt = False  # silent for the whole window: the provider does not have it
        window = (
            "no word from the provider within router.in_doubt_window_s "
            f"({settings.in_doubt_window_s:g}s)"
        )
        if settings.on_unknown_outcome == "dead_letter":
            unknown = UnknownOutcomeError(f"{cause}, and {window}")
            verdict = await self._outcomes.give_up(send, lease, unknown, max(attempts, 1))
            self.count(channel, "confirmed" if verdict is Verdict.SENT else "dead_lettered")
            return verdict
        if error is not None and attempts >= settings.max_attempts:  # (an orphan has one left)
            log.warning(
                "%s send failed after %d attempt(s): %s; %s", channel, attempts, error, window
            )
            verdict = await self._outcomes.give_up(send, lease, error, attempts)
            self.count(channel, "confirmed" if verdict is Verdict.SENT else "exhausted")
            return verdict
        self.count(channel, "resent")
        log.warning("%s send in doubt (%s): %s; sending it again", channel, cause, window)
        return None

    async def _await_verdict(self, lease: Lease) -> Marker | None:
        """The marker once it holds the provider's word (`sent:`, or failed by the provider
        later), or None once
        `router.in_doubt_window_s` passed without it. Holds back only this conversation
        (`held()`); keeps the lease alive; hands the record back (RetryableError) when the
        process stops or the partition is revoked.

        Polled, not notified: sends in doubt are rare (a crash, a timeout), a poll is one GET
        riding the markers' auto-pipeline, and a notification (pub/sub from the webhooks role)
        would need a subscription per process and a poll anyway for one published while this
        process was not listening."""
        markers = self._leases.markers
        window_s = self._settings.in_doubt_window_s
        started = time.monotonic()
        renew_at = started + markers.lease_s / 3
        delay = _VERDICT_POLL_FIRST_S
        async with held():
            while True:
                marker = await markers.read(lease.key)
                if marker.kind is Kind.SENT or marker.failed_by_provider:
                    return marker
                if marker.value != lease.value:  # not ours any more (expired, taken over)
                    lease.settled = True
                    raise RetryableError("the send lease changed hands while in doubt")
                now = time.monotonic()
                if now - started >= window_s:
                    return None
                if now >= renew_at:
                    renewed = await markers.renew(lease.key, lease.value)
                    if renewed is None:
                        continue  # changed meanwhile: read it again
                    lease.value, renew_at = renewed, now + markers.lease_s / 3
                pause = min(delay, window_s - (now - started), renew_at - now)
                if self._ctx.stopping.is_set() or await wait_unless_handed_back(pause):
                    raise RetryableError("handing the record back while a send is in doubt")
                delay = min(delay * 2, _VERDICT_POLL_CAP_S)
