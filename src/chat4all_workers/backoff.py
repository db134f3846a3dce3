"""The one backoff rule: exponential delays with full jitter, and a server's hint on top.

Full jitter (a uniform delay in [0, min(cap, base * 2**n)]) spreads retries of many workers that
failed together, so a recovering dependency is not hit by a synchronised wave. Each retrying
loop of the process (the consumer engine's in-place retries, the router's attempts and
throttles, outages outlasted, connections at start-up, the supervisor's restarts, the mocks'
webhooks) has its own exit rule (attempts, a deadline, a stop, a refusal), so they share the
delay, not a loop.
"""

from __future__ import annotations

import random

# Work that met an outage (a backing service unreachable or restarting) is tried again at most
# OUTAGE_CAP_S apart, however long the outage: its end is the service's, not a sign that the work
# is unwelcome, so once the service is back the work resumes within seconds. A provider's
# refusals back off further (the consumer engine's own cap).
OUTAGE_BASE_S = 0.2
OUTAGE_CAP_S = 5.0


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """The delay before retry number `attempt` (0 for the first retry)."""
    ceiling = min(cap_s, base_s * float(1 << min(attempt, 62)))
    if not jitter:
        return ceiling
    return float((rng or random).uniform(0.0, ceiling))


def retry_delay_s(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    whole_hint: bool = False,
    rng: random.Random | None = None,
) -> float:
    """`backoff_delay_s`, or a server's hint (Retry-After) when longer: capped at `cap_s`, or
    whole with `whole_hint` (a throttle: sending before the provider asked only earns another)."""
    delay = backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s, rng=rng)
    if retry_after_s is None:
        return delay
    return max(delay, retry_after_s if whole_hint else min(retry_after_s, cap_s))
