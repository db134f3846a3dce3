"""A paused account: what the router does when the provider refuses the sending account itself.

An account-class answer (an expired token, a revoked permission, a policy block, a locked
account) fails every message of that account the same way until an operator acts. Sending the
rest would dead-letter all of them within seconds (each needing a manual replay), so the first
such answer pauses the account in this process: no new call starts, and its messages are held
(not failed, not dead-lettered; each still owned by its conversation, so the order per
conversation is kept). Answers of calls already under way that come back the same are held too.
Only that account: every other account, of either channel, goes on at its own pace.

The account resumes by itself: after `probe_base_s`, the next held send goes through as a
probe; if the provider accepts it (or answers anything but an account error: a throttle or a
rejected recipient also prove the account works), the account resumes and every held send goes
on; if not, the next probe waits twice as long, up to `probe_cap_s`. An inconclusive probe (no
answer, a 5xx) keeps the delay. Only the probe resumes the account: a success of a call sent
before the pause says nothing about the account now. A new token (`accounts rotate-token`)
makes the next probe due at once (`probe_now`).

Per process, on purpose: each process learns it from one failed call of its own, and no shared
state can hold an account paused after the cause went away. `stats()` is what `/readyz` shows
under `accounts` (the process stays ready: the other accounts, and everything else, still work).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chat4all_workers.errors import RetryableError
from chat4all_workers.frozen import frozen
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


@frozen
class PauseChange:
    """A state change, for the metric: `reason` is the label (the provider's code)."""

    name: str  # the account's ref: whatsapp/acme
    paused: bool
    reason: str


class AccountPause:
    def __init__(
        self,
        name: str,
        *,
        probe_base_s: float,
        probe_cap_s: float,
        on_change: Callable[[PauseChange], None] = lambda change: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._probe_base_s = probe_base_s
        self._probe_cap_s = max(probe_cap_s, probe_base_s)
        self._on_change = on_change
        self._clock = clock
        self.paused = False
        self.reason: str | None = None
        self._label = ""
        self._since = datetime.now(UTC)
        self._paused_at = 0.0
        self._delay_s = probe_base_s
        self._next_probe_at = 0.0
        self._probing = False
        self._closed = False
        self._changed = asyncio.Event()
        self.held = 0  # sends waiting for the account now
        self.probes = 0  # probes sent in the current (or last) pause
        self.resumes = 0  # pauses ended by a probe that went through: the account worked then

    def stats(self) -> dict[str, Any]:
        return {
            "state": "paused" if self.paused else "active",
            "reason": self.reason,
            "since": self._since.isoformat(),
            "held": self.held,
            "probes": self.probes,
        }

    def pause(self, reason: str, *, label: str, probe: bool) -> None:
        """An account-class answer. `probe`: it answered this account's probe."""
        now = self._clock()
        if not self.paused:
            self.paused, self.reason, self._label = True, reason, label
            self._since, self._paused_at = datetime.now(UTC), now
            self._delay_s = self._probe_base_s
            self._next_probe_at = now + self._delay_s
            self.probes = 0
            log.warning(
                "%s paused: %s; holding its messages, first probe in %.0fs",
                self.name,
                reason,
                self._delay_s,
            )
            self._on_change(PauseChange(self.name, True, label))
        elif probe:
            self.reason = reason
            self._delay_s = min(self._delay_s * 2, self._probe_cap_s)
            self._next_probe_at = now + self._delay_s
            delay = self._delay_s
            log.info("%s still paused: %s; next probe in %.0fs", self.name, reason, delay)
        if probe:
            self._probing = False
        self._notify()

    def probe_done(self) -> None:
        """The probe ended without a verdict (no answer, a 5xx, cancelled): same delay again."""
        if self._probing:
            self._probing = False
            self._next_probe_at = self._clock() + self._delay_s
            self._notify()

    def resume(self, *, why: str | None = None) -> None:
        """The probe went through: every held send goes on. `why`: not a probe, something else
        ended the pause (the account was disabled: its held sends go on to fail)."""
        self._probing = False
        if self.paused:
            log.info(
                "%s %s after %.1fs paused (%s)",
                self.name,
                "resumed" if why is None else f"no longer paused ({why})",
                self._clock() - self._paused_at,
                self.reason,
            )
            self.paused, self.reason = False, None
            if why is None:
                self.resumes += 1
            self._since = datetime.now(UTC)
            self._on_change(PauseChange(self.name, False, self._label))
        self._notify()

    def probe_now(self) -> None:
        """Something that may have fixed the account changed (a new token): the next held send
        goes as the probe at once, not after the backoff."""
        if self.paused and not self._probing:
            self._next_probe_at = self._clock()
            self._notify()

    def close(self) -> None:
        """The process stops: every waiter gives its send back (RetryableError)."""
        self._closed = True
        self._notify()

    async def wait_turn(self) -> bool:
        """Return once this send may go: False while active, True when it is the probe."""
        while self.paused:
            if self._closed:
                raise RetryableError("stopping while the account is paused")
            now = self._clock()
            if not self._probing and now >= self._next_probe_at:
                self._probing = True
                self.probes += 1
                return True
            changed = self._changed
            timeout = None if self._probing else self._next_probe_at - now
            await wait_event(changed, timeout_s=timeout)
        return False

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
