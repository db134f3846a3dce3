"""A circuit breaker (closed -> open -> half-open) with an injectable clock.

Closed: calls pass; `failure_threshold` consecutive failures open it (a failure is whatever the
caller counts: the producer counts each unacknowledged record). Open: calls are refused at once
with CircuitOpenError until `cooldown_s` has passed. Half-open: exactly one probe call is let
through; its success closes the breaker, its failure opens it for another cool-down. A success
reported while open (a late answer to a call made before it opened) closes it too: the service
answers again.

The first opening is logged at WARNING; re-openings after a failed probe at INFO (the same outage
going on is not news), and so are closing and half-opening.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from chat4all_workers.errors import CircuitOpenError
from chat4all_workers.frozen import frozen

log = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@frozen
class BreakerStats:
    service: str
    state: str
    consecutive_failures: int
    opened_at: float | None
    times_opened: int


class CircuitBreaker:
    def __init__(
        self,
        service: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.service = service
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._cooled_down():
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go through now; pair with a report."""
        state = self.state
        if state is BreakerState.OPEN:
            raise CircuitOpenError(f"{self.service} circuit is open")
        if state is BreakerState.HALF_OPEN:
            if self._probe_in_flight:
                raise CircuitOpenError(f"{self.service} circuit is half-open, probe in flight")
            self._probe_in_flight = True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._opened_at = None
            self._set(BreakerState.CLOSED)

    def record_abandoned(self) -> None:
        """A call ended with neither verdict (cancelled, or a bug): hand back the probe slot.

        Without this, a cancelled half-open probe would leave the breaker refusing every call
        for ever, since only a success or a failure would otherwise clear the slot.
        """
        self._probe_in_flight = False

    def record_failure(self, *, count: int = 1) -> None:
        self._failures += count
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if (
            was_probe
            or self._state is BreakerState.HALF_OPEN
            or (self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold)
        ):
            self._opened_at = self._clock()
            self._times_opened += 1
            self._set(BreakerState.OPEN)

    def stats(self) -> BreakerStats:
        return BreakerStats(
            service=self.service,
            state=self.state.name.lower(),
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            times_opened=self._times_opened,
        )

    def _cooled_down(self) -> bool:
        return self._opened_at is not None and self._clock() - self._opened_at >= self.cooldown_s

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            # An operator's timeline of the outage: opened (WARNING), probing, closed again.
            news = state is BreakerState.OPEN and self._state is BreakerState.CLOSED
            self._state = state
            log.log(
                logging.WARNING if news else logging.INFO,
                "%s circuit breaker %s (%d consecutive failures)",
                self.service,
                state.name.lower().replace("_", "-"),
                self._failures,
            )
            if self._on_change is not None:
                self._on_change(state)
