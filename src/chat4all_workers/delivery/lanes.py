"""Lanes: one sending account as the router sends for it, its pace and its pause.

A `Lane` holds the account (accounts/model.py), the adapter that sends as it, its `Pacer`
(channels/pacing.py: the account's rate and the recipient's pair limit, shared by every router
through Redis) and its `AccountPause` (channels/pause.py: the account paused by an account-class
answer, its held sends, the probe that resumes it). One lane per account, so one business's
expired token or throttles never slow another's (delivery/accounts.py builds them). What the
router asks of a lane:

- `turn()`: wait while the account is paused (held: not counted against kafka.max_in_flight);
  True when this send is the probe;
- `settle_probe(verdict, error)`: what the probe's round says about the account;
- `after_throttle(send)`: a throttled answer slows the account's pace (AIMD; or holds it when
  the throttles are not the rate) and waits, spending no attempt, until
  `router.throttle_deadline_s` after the send's first throttle;
- `calm()`: a send went through; once no throttle came for a recovery period, say so once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from chat4all_workers.accounts.model import Account
from chat4all_workers.backoff import retry_delay_s
from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.channels.pacing import Pacer, PaceSettings
from chat4all_workers.channels.pause import AccountPause, PauseChange
from chat4all_workers.delivery.send import Send, Verdict
from chat4all_workers.errors import (
    AccountError,
    PermanentError,
    ProviderError,
    ProviderRejectedError,
    ThrottleDeadlineError,
    ThrottledError,
)
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.held import held
from chat4all_workers.meta.limits import SLOW_MEDIA
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.waiting import Wait

log = logging.getLogger(__name__)


@frozen
class LaneSettings:
    """The router's settings a lane reads."""

    retry_base_s: float
    retry_cap_s: float
    throttle_deadline_s: float
    pacing_recovery_s: float
    pause_probe_base_s: float
    pause_probe_cap_s: float


class Lane:
    def __init__(
        self,
        account: Account,
        adapter: ChannelAdapter,
        *,
        pacer: Pacer,
        media_pacer: Pacer | None = None,
        settings: LaneSettings,
        timeout_s: float,
        metrics: Metrics,
        wait: Wait,
        label: str | None = None,
    ) -> None:
        self.account = account
        self.adapter = adapter
        self.pacer = pacer
        # Slow media's own pace (Instagram's audio and video: meta/limits.py SLOW_MEDIA), or None.
        self.media_pacer = media_pacer
        self.timeout_s = timeout_s
        # The `account` label of its metrics (bounded: delivery/accounts.py).
        self.label = account.key if label is None else label
        self._settings = settings
        self._metrics = metrics
        self._wait = wait
        self.pause = AccountPause(
            account.ref,
            probe_base_s=settings.pause_probe_base_s,
            probe_cap_s=settings.pause_probe_cap_s,
            on_change=self._paused_gauge,
        )
        self.throttled_at: float | None = None  # the last throttled answer, while throttling lasts
        # Why nothing may be sent from this account any more (disabled, removed), or None.
        self.retired: PermanentError | None = None
        self.holding = False  # the pace held against throttles that are not the rate (logged once)

    @property
    def name(self) -> str:
        """The account's ref (`whatsapp/acme`): what logs say."""
        return self.account.ref

    @property
    def channel(self) -> str:
        return self.account.channel

    @property
    def paced(self) -> bool:
        return self.pacer.enabled or (self.media_pacer is not None and self.media_pacer.enabled)

    def retire(self, error: PermanentError) -> None:
        """The account was disabled or removed: its held sends stop waiting, and fail with
        `error` (no call)."""
        self.retired = error
        if self.pause.paused:
            self.pause.resume(why=str(error))

    def refresh(
        self, account: Account, adapter: ChannelAdapter, pacer: Pacer, media_pacer: Pacer | None
    ) -> None:
        """The account changed (a rotated token, a new rate): the next call uses the new
        adapter and pace; a paused account probes at once with a new token."""
        new_token = account.token != self.account.token
        self.retired = None
        self.account, self.adapter, self.pacer = account, adapter, pacer
        self.media_pacer = media_pacer
        if new_token:
            self.pause.probe_now()

    async def turn(self) -> bool:
        """Wait while the channel is paused (held: not counted against kafka.max_in_flight);
        True when this send is the probe."""
        if not self.pause.paused:
            return False
        self.pause.held += 1
        try:
            async with held():
                return await self.pause.wait_turn()
        finally:
            self.pause.held -= 1

    async def slot(self, outbound: OutboundMessage, *, probe: bool) -> float | None:
        """Wait for this call's slot of the account's pace (and first of its slow-media pace,
        for audio and video where the channel paces them apart): the seconds waited, or None
        once the account paused meanwhile (unless this is the probe)."""
        if not self.paced:  # what both pacers would answer, without their calls: most sends
            return 0.0
        wanted = self.wanted(probe)
        waited = 0.0
        media = self._media_pacer(outbound)
        if media is not None:
            media_wait = await media.acquire(outbound.recipient, wanted=wanted)
            if media_wait is None:
                return None
            waited = media_wait
        account_wait = await self.pacer.acquire(outbound.recipient, wanted=wanted)
        return None if account_wait is None else waited + account_wait

    def _media_pacer(self, outbound: OutboundMessage) -> Pacer | None:
        slow = outbound.kind == "media" and outbound.media_type in SLOW_MEDIA.get(self.channel, ())
        return self.media_pacer if slow else None

    def wanted(self, probe: bool) -> Callable[[], bool]:
        """Whether a send waiting for its slot still wants it: not once its account paused
        (unless it is the probe)."""
        return (lambda: True) if probe else (lambda: not self.pause.paused)

    def account_refused(self, error: AccountError | ThrottledError | None, *, probe: bool) -> None:
        """An account-class answer: the account pauses (a probe's answer: it stays paused)."""
        assert isinstance(error, AccountError)
        self.pause.pause(str(error), label=_label(error), probe=probe)

    def refused_again(self, send: Send) -> ProviderRejectedError | None:
        """The safety net of the code table: a send that gets an account-class answer again after
        a probe went through since its last one (the account works) is this message's problem,
        never a pause loop: the error to fail it with, in the provider's words."""
        error = send.last_error
        assert isinstance(error, AccountError)
        if send.refused_at_resume is not None and self.pause.resumes > send.refused_at_resume:
            return ProviderRejectedError(
                f"{error}; refused again after the account was shown to work (a probe went "
                "through): this message is what the provider refuses",
                provider_code=error.provider_code,
                fbtrace_id=error.fbtrace_id,
            )
        send.refused_at_resume = self.pause.resumes
        return None

    def settle_probe(self, verdict: Verdict, error: AccountError | ThrottledError | None) -> None:
        if verdict is Verdict.ACCOUNT:
            self.account_refused(error, probe=True)
        elif verdict in (Verdict.SENT, Verdict.REJECTED, Verdict.THROTTLED):
            self.pause.resume()
        else:
            self.pause.probe_done()

    async def after_throttle(self, send: Send) -> ThrottleDeadlineError | None:
        """After a throttled answer: slow the pace and wait; the error once past the deadline."""
        settings = self._settings
        exc = send.last_error
        assert isinstance(exc, ThrottledError)
        now = time.monotonic()
        if send.throttled_since is None:
            send.throttled_since = now
        if now - send.throttled_since >= settings.throttle_deadline_s:
            error = ThrottleDeadlineError(
                f"still throttled after {now - send.throttled_since:.1f}s "
                f"(router.throttle_deadline_s = {settings.throttle_deadline_s:g}): {exc}"
            )
            error.__cause__ = exc
            return error
        # A slow-media send's throttle is its media pace's: the account's other sends go on.
        pacer = self._media_pacer(send.outbound) or self.pacer
        throttle = await pacer.throttled(
            send.outbound.recipient, pair=exc.pair, retry_after_s=exc.retry_after_s
        )
        if self.throttled_at is None:
            log.warning(
                "%s throttles sends (%s)%s; waiting for its pace, no attempt spent",
                self.name,
                exc,
                f"; rate now {throttle.rate_per_s:.1f}/s" if throttle.rate_per_s else "",
            )
        if throttle.held and not self.holding:
            log.warning(
                "%s: throttles that are not the rate: rate held at %.1f/s (%s)",
                self.name,
                throttle.rate_per_s,
                exc,
            )
            self.holding = True
        elif throttle.decreased:
            self.holding = False  # they follow the rate again: say so when it holds next
        self.throttled_at = now
        # The provider's Retry-After is honoured whole: sending before it only earns throttles.
        delay = retry_delay_s(
            send.throttles,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            retry_after_s=exc.retry_after_s,
            whole_hint=True,
        )
        send.throttles += 1
        remaining = settings.throttle_deadline_s - (now - send.throttled_since)
        async with held():
            await self._wait(min(delay, remaining))
        return None

    def calm(self) -> None:
        """A send went through: once no throttle came for a recovery period, say so once."""
        if self.throttled_at is None:
            return
        quiet = time.monotonic() - self.throttled_at
        if quiet >= self._settings.pacing_recovery_s:
            log.info("%s: no throttled answer for %.0fs", self.name, quiet)
            self.throttled_at = None
            self.holding = False

    def _paused_gauge(self, change: PauseChange) -> None:
        """`channel_paused`: the paused accounts per (channel, account label, reason); a label
        that stands for many accounts (`_other`) counts each of them."""
        labels = {"channel": self.channel, "account": self.label, "reason": change.reason}
        self._metrics.channel_paused.add(labels, 1 if change.paused else -1)


def pace_settings(account: Any, *, recovery_s: float) -> PaceSettings:
    """An account's pace (`max_rate_per_s`, `pair_burst`, `pair_interval_s`: an Account, or a
    channel section)."""
    return PaceSettings(
        max_rate_per_s=account.max_rate_per_s,
        pair_burst=account.pair_burst,
        pair_interval_s=account.pair_interval_s,
        recovery_s=recovery_s,
    )


def _label(error: ProviderError) -> str:
    """The `reason` label of channel_paused: the provider's code, low cardinality."""
    return str(error.provider_code) if error.provider_code is not None else "http"
