"""Sends at the provider's pace, shared by every router process of a deployment through Redis.

Why: a provider's limit is per sending account (WhatsApp: 80 messages/s per business number),
not per process. Three routers that each sent "at most 80/s" would send 240/s, and the provider
would throttle two thirds of it. So the pace lives in Redis, in one atomic Lua script per
decision, with Redis's own clock (`TIME`): the hosts' clocks never enter it.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp):
per account key a "theoretical arrival time" (TAT); a send may go at TAT - tolerance, and moves
the TAT on by one emission interval (1 / rate). The script reserves ahead: it books the slot and
answers how long to wait for it, but only within `_HORIZON_S` (a quarter second); further out it
books nothing and says when to ask again. A waiter cancelled with a booked slot so wastes at most
a quarter second of the rate. In each process a FIFO (an asyncio.Lock, fair) stands in front of
the script, so only the head of the queue asks Redis: about one call per send, not one per
waiter per tick.

The rate adapts (AIMD), in Redis too, so every process sees the same: a throttled answer halves
the account's rate (at most once per `_DECREASE_DEBOUNCE_S`: fifty throttled answers that come
back together are one signal, not fifty), never below `max_rate / 20`; from the last decrease the
rate climbs back linearly, reaching the configured maximum after `recovery_s`. Why adapt when
the limit is known: the real limit is often lower (Meta counts inbound messages against the same
80/s; a number shared with the WhatsApp Business app has 20/s; other applications may send for
the same account), and the provider's answer is the only measure of it.

Pair pacing, per (account, recipient), rides the same script call: a GCRA with WhatsApp's pair
limit (a burst, then one per interval; Meta: 45, then one per 6 s). It is one below the burst
the provider allows, so a send that reaches the provider a little early (network jitter) still
fits. A send refused for its pair does not hold the process's queue: it leaves it, waits (under
the engine's `held()`, so one slow recipient does not eat the in-flight budget of the others;
the engine already holds back only that conversation), and asks again. A 131056 answer (the
provider counted more than we did) marks the pair as used up, so the next send to that recipient
waits one interval.

Keys, through `resources.redis_key`: `pace:{channel}:{account}` (a hash: tat, rate, dec; TTL one
hour, refreshed by use) and `pace:{channel}:{account}:to:{recipient}` (the pair's TAT, expiring
once it is in the past). A rate of 0 turns pacing off: no Redis call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import redis.asyncio as aioredis

_HORIZON_S = 0.25  # how far ahead a slot may be booked
_DECREASE_DEBOUNCE_S = 1.0  # throttled answers within this long of a decrease are one signal
_DECREASE_FACTOR = 0.5
_MIN_RATE_FRACTION = 1 / 20
_ACCOUNT_KEY_TTL_S = 3600
_MIN_WAIT_S = 0.001

# Both scripts: the account's state, and its rate now: climbed back linearly (ARGV[2] per
# second) since the last decrease, up to the maximum (ARGV[1]).
_RATE_NOW = """
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'dec')
local rate = tonumber(ARGV[1])
if state[2] then
  local climbed = tonumber(ARGV[2]) * (now - tonumber(state[3])) / 1000000
  rate = math.min(rate, tonumber(state[2]) + climbed)
end
"""
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS: account hash, pair key (unused when pair pacing is off)
# ARGV: max rate /s, recovery /s per s, horizon us, pair interval us (0 = off), pair tolerance us,
#       account key TTL s
# -> {booked 0|1, wait us, refused by the pair 0|1}
_ACQUIRE = (
    _NOW
    + """
local horizon = tonumber(ARGV[3])
local pair_interval = tonumber(ARGV[4])
local pair_tolerance = tonumber(ARGV[5])
local pair_tat = now
if pair_interval > 0 then
  pair_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local pair_wait = pair_tat - pair_tolerance - now
  if pair_wait > horizon then return {0, pair_wait, 1} end
end
"""
    + _RATE_NOW
    + """
local tat = math.max(tonumber(state[1] or '0'), now)
local wait = tat - now
if wait > horizon then return {0, wait, 0} end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + 1000000 / rate))
redis.call('EXPIRE', KEYS[1], ARGV[6])
if pair_interval > 0 then
  local next_tat = pair_tat + pair_interval
  redis.call('SET', KEYS[2], string.format('%.0f', next_tat), 'PX',
             math.floor((next_tat - now) / 1000) + 1000)
  wait = math.max(wait, pair_tat - pair_tolerance - now)
end
return {1, math.max(wait, 0), 0}
"""
)

# KEYS: account hash, pair key
# ARGV: max rate, recovery /s per s, factor, min rate, debounce us, retry-after us,
#       pair interval us (> 0: a pair throttle), pair tolerance us, account key TTL s
# -> {rate now (milli-sends/s), decreased 0|1}
_THROTTLED = (
    _NOW
    + """
local pair_interval = tonumber(ARGV[7])
if pair_interval > 0 then
  local used_up = now + tonumber(ARGV[8]) + pair_interval
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), used_up)
  local ttl_ms = math.floor((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', ttl_ms)
  return {0, 0}
end
"""
    + _RATE_NOW
    + """
local decreased = 0
if not state[3] or now - tonumber(state[3]) >= tonumber(ARGV[5]) then
  rate = math.max(tonumber(ARGV[4]), rate * tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'dec', string.format('%.0f', now))
  decreased = 1
end
local retry_after = tonumber(ARGV[6])
if retry_after > 0 then
  local tat = math.max(tonumber(state[1] or '0'), now + retry_after)
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
return {math.floor(rate * 1000), decreased}
"""
)

Sleep = Callable[[float], Awaitable[None]]
Hold = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class PaceSettings:
    max_rate_per_s: float  # 0 = no pacing of the account
    pair_burst: int  # 0 = no pair pacing
    pair_interval_s: float
    recovery_s: float

    @property
    def paced(self) -> bool:
        return self.max_rate_per_s > 0 or (self.pair_burst > 0 and self.pair_interval_s > 0)


@dataclass(frozen=True)
class Throttle:
    """What a throttled answer did to the pace: the account's rate now, and whether this
    answer decreased it (False: another one did within the debounce window)."""

    rate_per_s: float
    decreased: bool


def _no_hold() -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class Pacer:
    """The pace of one sending account of one channel, in this process and shared with the others.

    `acquire(recipient)` returns once the send may go (the seconds it waited); `throttled(...)`
    feeds a throttled answer back. `sleep` waits (the router's returns early when the process
    stops); `hold` wraps the long waits of one recipient (the engine's `held()`).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        account_key: str,
        settings: PaceSettings,
        sleep: Sleep = asyncio.sleep,
        hold: Hold = _no_hold,
    ) -> None:
        self.settings = settings
        self.enabled = settings.paced
        self._account_key = account_key
        self._sleep = sleep
        self._hold = hold
        self._turn = asyncio.Lock()
        # An unpaced account (rate 0) with pair pacing: a rate so high it never waits.
        self._max_rate = settings.max_rate_per_s or 1e9
        self._recovery = self._max_rate * (1 - _DECREASE_FACTOR) / max(settings.recovery_s, 1e-3)
        pair = settings.pair_burst > 0 and settings.pair_interval_s > 0
        self._pair_interval_us = settings.pair_interval_s * 1e6 if pair else 0.0
        # One below the provider's burst: a send arriving a little early still fits.
        self._pair_tolerance_us = max(0, settings.pair_burst - 2) * self._pair_interval_us
        self._acquire = redis.register_script(_ACQUIRE)
        self._throttled = redis.register_script(_THROTTLED)

    def pair_key(self, recipient: str) -> str:
        return f"{self._account_key}:to:{recipient}"

    async def acquire(
        self, recipient: str, *, wanted: Callable[[], bool] = lambda: True
    ) -> float | None:
        """Wait for this send's slot; the seconds waited (0 when pacing is off), or None once
        `wanted()` turned false (a paused channel: the send leaves the queue unbooked, so the
        queue behind it, and the probe, do not wait for slots nobody will use)."""
        if not self.enabled:
            return 0.0
        started = time.monotonic()
        keys = [self._account_key, self.pair_key(recipient)]
        args = [
            self._max_rate,
            self._recovery,
            _HORIZON_S * 1e6,
            self._pair_interval_us,
            self._pair_tolerance_us,
            _ACCOUNT_KEY_TTL_S,
        ]
        while True:
            async with self._turn:  # only the head of this process's queue asks Redis
                while True:
                    await self._sleep(0)  # a checkpoint: stop before booking a slot
                    if not wanted():
                        return None
                    booked, wait_us, by_pair = await self._acquire(keys=keys, args=args)
                    wait_s = int(wait_us) / 1e6
                    if booked or by_pair:
                        break
                    # The account is booked out past the horizon: the head waits, the queue
                    # behind it too (they would be refused alike), until half the horizon is
                    # free again, and then books a run of slots: with several processes
                    # competing, about one refused call per run, not one per slot.
                    await self._sleep(max(_MIN_WAIT_S, wait_s - _HORIZON_S / 2))
            if booked:
                if wait_s > 0:
                    await self._sleep(wait_s)  # outside the turn: the next one books meanwhile
                return time.monotonic() - started
            # This recipient must wait; others go on. Out of the queue, and held.
            async with self._hold():
                await self._sleep(max(_MIN_WAIT_S, wait_s - _HORIZON_S))
            if not wanted():
                return None

    async def throttled(
        self, recipient: str, *, pair: bool, retry_after_s: float | None
    ) -> Throttle:
        """A throttled answer: a pair throttle uses the pair up; any other slows the account."""
        if pair and not self._pair_interval_us:
            pair = False  # no pair pacing configured: slow the account instead
        if not pair and not self.settings.max_rate_per_s:
            return Throttle(rate_per_s=0.0, decreased=False)  # no pace to slow: backoff alone
        rate_milli, decreased = await self._throttled(
            keys=[self._account_key, self.pair_key(recipient)],
            args=[
                self._max_rate,
                self._recovery,
                _DECREASE_FACTOR,
                self._max_rate * _MIN_RATE_FRACTION,
                _DECREASE_DEBOUNCE_S * 1e6,
                math.ceil((retry_after_s or 0.0) * 1e6),
                self._pair_interval_us if pair else 0,
                self._pair_tolerance_us,
                _ACCOUNT_KEY_TTL_S,
            ],
        )
        if pair:
            return Throttle(rate_per_s=0.0, decreased=False)
        return Throttle(rate_per_s=int(rate_milli) / 1000, decreased=bool(decreased))
