"""The one shutdown deadline: `supervisor.shutdown_timeout_s`, from the stop request to the last
connection closed.

Nested timeouts (a drain timeout, then one in the engine's `finally`, one in `stop()`, and none in
the cleanups) add up to more than anyone configured. Instead every part of the process reads the
same deadline, begun once when the stop is requested, and its named points in time:

    begin ......... drain_end . unwind_end . handback_end . cleanup_end . flush_end . end
    in-flight work   unfinished  cancelled    engines have   cancelled     producer    pools
    finishes; no     handlers    handlers     committed and  roles have    flushed or  and
    new work is      are         have         left; the      rolled back,  its rest    clients
    taken            cancelled   unwound      supervisor     handed back   dropped     closed
                                              cancels what
                                              still runs

The last fifth of the budget (at most 5 s), the reserve, is shared by the steps after the
drain: its first half is the unwinding's (the one step whose work grows with the work in
flight: a thousand cancelled sends each settle their lease), the second half is split evenly
between the hand-back, the clean-up and the close, the last shared by the producer and then the
pools. Before `begin()` every
point is infinitely far away, so code that merely runs (a test's engine, a `run-once` pass) is
never cut short by a deadline nobody started.
"""

from __future__ import annotations

import asyncio
import math

_RESERVE_FRACTION = 0.2
_RESERVE_CAP_S = 5.0


class ShutdownDeadline:
    def __init__(self, budget_s: float) -> None:
        self.budget_s = max(0.0, budget_s)
        self._end: float | None = None

    @classmethod
    def begun_now(cls, budget_s: float) -> ShutdownDeadline:
        deadline = cls(budget_s)
        deadline.begin()
        return deadline

    def begin(self) -> None:
        """Start the clock (event-loop time); only the first call counts."""
        if self._end is None:
            self._end = asyncio.get_running_loop().time() + self.budget_s

    @property
    def begun(self) -> bool:
        return self._end is not None

    @property
    def reserve_s(self) -> float:
        return min(_RESERVE_CAP_S, self.budget_s * _RESERVE_FRACTION)

    def _point(self, before_end_s: float) -> float:
        return math.inf if self._end is None else self._end - before_end_s

    def drain_end(self) -> float:
        return self._point(self.reserve_s)

    def unwind_end(self) -> float:
        return self._point(self.reserve_s / 2)

    def handback_end(self) -> float:
        return self._point(self.reserve_s / 3)

    def cleanup_end(self) -> float:
        return self._point(self.reserve_s / 6)

    def flush_end(self) -> float:
        return self._point(self.reserve_s / 12)

    def end(self) -> float:
        return self._point(0.0)

    @staticmethod
    def left_s(point: float) -> float | None:
        """Seconds from now until `point` (at least 0), None when it is not set."""
        if math.isinf(point):
            return None
        return max(0.0, point - asyncio.get_running_loop().time())


def timeout_at(point: float) -> asyncio.Timeout:
    """`asyncio.timeout_at` for a deadline point; an unset (infinite) point never expires."""
    return asyncio.timeout_at(None if math.isinf(point) else point)
