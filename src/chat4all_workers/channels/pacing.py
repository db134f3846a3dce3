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

Throttles that are not the rate. Some providers throttle a share of calls whatever the rate (a
busy backend answering 429 to one call in five). Halving on each of those walks the rate down to
its floor, two or three sends a second, and lowers nothing: the share stays. So every decrease
is also an experiment: the account's hash counts, from the end of the decrease's debounce, the
calls (each booked slot, by its time: the acquire script counts it, no extra Redis call) and the
throttled answers, and remembers what the interval before the decrease measured: its throttle
share `s0`. A throttled answer past the debounce then weighs two explanations of what came
since:

- the throttles follow the rate: the provider takes what it took before, `L = r0 * (1 - s0)`
  calls a second (r0: the rate at the decrease), so a call at rate r is throttled with
  probability `1 - L / r` (none under L). The acquire script adds that up per counted call
  (`exp`): the throttles this explanation expects;
- they do not: the same share as before, `s0 * n` of the n calls counted.

It halves (as before) when: it is the first throttled answer of the account (nothing to compare
with); or the first since the decrease came once the rate had climbed back half of what it lost
(1.5 x the halved rate: the halving had stopped them, they came back with the rate); or half the
calls or more were throttled (there halving loses nothing if the throttles are the rate's: the
provider still takes `L <= r / 2`); or the two explanations expect clearly different counts (2
standard deviations apart) and the count is nearer the rate's; or it is clearly above both (3
standard deviations: a new cause, or `s0` measured at the onset of the throttles). Otherwise it
holds the rate (`Throttle.held`), which goes on climbing back from the last decrease, and the
throttled send waits alone (its Retry-After, or the router's backoff) without moving the
account's TAT; with fewer than 20 calls counted it holds too, and counts on (20 calls show about
four throttles at a 20 % share: fewer cannot tell that share from none). The standard deviation
is the binomial one of `s0 * n`, widened by `s0`'s own sampling error (`1 + n / n0`, n0 the
calls `s0` was measured over); three deviations above because every throttled answer looks
again. What this gives, in a model of these rules (one sender keeping the pace busy at 80/s,
answers 50 ms later, recovery 30 s, 90 s, 16 runs each): a 20 % random share halves once (now
and then twice), climbs back to the maximum and gets 58 sends a second accepted (the old rule:
5); 5 % and 40 %: 69 and 36 (8 and 4); real limits of 60, 40, 30 and 20/s under 80, or of 80
under a configured 1000, are driven down as before (0.1, 0.4, 1.0, 2.6 and 10 % of calls
throttled; the old rule: 0.1, 0.3, 0.8, 1.9 and 10); a limit ten times under the configured rate
costs more on the way down (17 % against 10 %). What it gives up: a provider refusing half of
all calls or more at random walks the rate down as before; a real limit that appears while the
account holds is found only once its throttles stand out against everything counted since the
decrease.

Pair pacing, per (account, recipient), rides the same script call: a GCRA with WhatsApp's pair
limit (a burst, then one per interval; Meta: 45, then one per 6 s). It is one below the burst
the provider allows, so a send that reaches the provider a little early (network jitter) still
fits. A send refused for its pair does not hold the process's queue: it leaves it, waits (under
the engine's `held()`, so one slow recipient does not eat the in-flight budget of the others;
the engine already holds back only that conversation), and asks again. A 131056 answer (the
provider counted more than we did) marks the pair as used up, so the next send to that recipient
waits one interval.

Slow media: Instagram's Send API takes audio and video at 10 calls/s per account against 300
for text (meta/limits.py `SLOW_MEDIA`; Meta's "Messenger Platform rate limits", which Instagram
Messaging shares). Such sends take a second pace of the same account: a `Pacer` on
`media_key(account_key)` (`pace:{channel}:{account}:media`) with
`PaceSettings.media(max_rate_per_s=instagram.media_rate_per_s, ...)` (8/s: headroom under 10; 0
= none). A slow-media send acquires its media slot first (the long wait, booking nothing of the
account's meanwhile), then the account's slot (and its pair), so it counts against both; its
throttled answer goes to the media pacer alone, which adapts as above.

Keys, through `resources.redis_key`: `pace:{channel}:{account}` (a hash: tat, rate, dec and the
counts n, k, exp, s0, n0, lim; TTL one hour, refreshed by use), `pace:{channel}:{account}:media`
(the same, for slow media) and `pace:{channel}:{account}:to:{recipient}` (the pair's TAT,
expiring once it is in the past). A rate of 0 turns pacing off: no Redis call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import redis.asyncio as aioredis

from chat4all_workers.frozen import frozen

_HORIZON_S = 0.25  # how far ahead a slot may be booked
_DECREASE_DEBOUNCE_S = 1.0  # throttled answers within this long of a decrease are one signal
_DECREASE_FACTOR = 0.5
_MIN_RATE_FRACTION = 1 / 20
_ACCOUNT_KEY_TTL_S = 3600
_MIN_WAIT_S = 0.001
# Throttles that are not the rate (the module's docstring says why these numbers).
_JUDGE_MIN_CALLS = 20  # fewer calls counted since the decrease: hold, and count on
_CAME_BACK = 1.5  # the first throttle once the rate climbed back to this x the halved rate
_HALF = 0.5  # a share this high halves whatever explains it
_APART_SD = 2.0  # the explanations' expectations at least this far apart to choose between them
_ABOVE_SD = 3.0  # a count this far above both explanations halves
_MEDIA_SUFFIX = ":media"

# Every script: the account's state, and its rate now: climbed back linearly (ARGV[2] per
# second) since the last decrease, up to the maximum (ARGV[1]).
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""
_RATE_NOW = """
local rate = tonumber(ARGV[1])
if state[2] then
  local climbed = tonumber(ARGV[2]) * (now - tonumber(state[3])) / 1000000
  rate = math.min(rate, tonumber(state[2]) + climbed)
end
"""

# KEYS: account hash, pair key (unused when pair pacing is off)
# ARGV: max rate /s, recovery /s per s, horizon us, pair interval us (0 = off), pair tolerance us,
#       account key TTL s, debounce us (< 0: count nothing)
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
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'dec', 'lim')
"""
    + _RATE_NOW
    + """
local tat = math.max(tonumber(state[1] or '0'), now)
local wait = tat - now
if wait > horizon then return {0, wait, 0} end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + 1000000 / rate))
-- A call counts if its slot (not its booking: up to a horizon earlier) is past the decrease's
-- debounce, as its answer will be (the answers within the debounce are one signal).
local debounce = tonumber(ARGV[7])
if debounce >= 0 and (not state[3] or tat - tonumber(state[3]) >= debounce) then
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  if state[4] then
    local expected = 1 - tonumber(state[4]) / rate
    if expected > 0 then
      redis.call('HINCRBYFLOAT', KEYS[1], 'exp', string.format('%.6f', expected))
    end
  end
end
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
#       pair interval us (> 0: a pair throttle), pair tolerance us, account key TTL s,
#       judge min calls, came-back factor, half share, apart sd, above sd
# -> {rate now (milli-sends/s), decreased 0|1, held 0|1}
_THROTTLED = (
    _NOW
    + """
local pair_interval = tonumber(ARGV[7])
if pair_interval > 0 then
  local used_up = now + tonumber(ARGV[8]) + pair_interval
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), used_up)
  local ttl_ms = math.floor((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[2], string.format('%.0f', tat), 'PX', ttl_ms)
  return {0, 0, 0}
end
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'dec', 'n', 'k', 'exp', 's0', 'n0')
"""
    + _RATE_NOW
    + """
local decreased, held = 0, 0
if not state[3] or now - tonumber(state[3]) >= tonumber(ARGV[5]) then
  local n = tonumber(state[4] or '0')
  local k = tonumber(state[5] or '0') + 1
  local halve
  if not state[3] then
    halve = true  -- the account's first: nothing to compare with
  elseif k == 1 and rate >= tonumber(ARGV[11]) * tonumber(state[2]) then
    halve = true  -- the halving had stopped them; they came back with the rate
  elseif not state[7] then
    halve = true  -- no share measured before (a hash from before the counts): as the first
  elseif n < tonumber(ARGV[10]) then
    halve = false  -- too few calls to judge: count on
  else
    local s0, n0 = tonumber(state[7]), tonumber(state[8])
    local same = s0 * n  -- the throttles the same share as before expects
    local follows = tonumber(state[6] or '0')  -- those the rate explains
    local sd = math.sqrt(math.max(1, same * (1 - s0) * (1 + n / n0)))
    halve = k >= tonumber(ARGV[12]) * n
      or (math.abs(follows - same) >= tonumber(ARGV[13]) * sd
          and math.abs(k - follows) < math.abs(k - same))
      or k > math.max(same, follows) + tonumber(ARGV[14]) * sd
  end
  if halve then
    local share = math.min(1, k / math.max(n, 1))
    local new_rate = math.max(tonumber(ARGV[4]), rate * tonumber(ARGV[3]))
    redis.call('HSET', KEYS[1], 'rate', tostring(new_rate), 'dec', string.format('%.0f', now),
               'n', 0, 'k', 0, 'exp', 0, 's0', tostring(share), 'n0', math.max(n, 1),
               'lim', tostring(rate * (1 - share)))
    rate = new_rate
    decreased = 1
  else
    redis.call('HSET', KEYS[1], 'k', k)
    held = 1
  end
end
-- Retry-After paces the account after a decrease (and within its debounce); a held throttle
-- paces only its own send (the router waits it out).
local retry_after = tonumber(ARGV[6])
if retry_after > 0 and held == 0 then
  local tat = math.max(tonumber(state[1] or '0'), now + retry_after)
  redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
return {math.floor(rate * 1000), decreased, held}
"""
)

# KEYS: account hash. ARGV: max rate, recovery /s per s
# -> {rate now (milli-sends/s), calls, throttled, share before (millionths, -1: none)}
_STATS = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'dec', 'n', 'k', 's0')
"""
    + _RATE_NOW
    + """
local share = -1
if state[6] then share = math.floor(tonumber(state[6]) * 1000000 + 0.5) end
return {math.floor(rate * 1000), tonumber(state[4] or '0'), tonumber(state[5] or '0'), share}
"""
)

Sleep = Callable[[float], Awaitable[None]]
Hold = Callable[[], AbstractAsyncContextManager[None]]


def media_key(account_key: str) -> str:
    """The key of an account's slow-media pace, beside the account's own."""
    return account_key + _MEDIA_SUFFIX


@frozen
class PaceSettings:
    max_rate_per_s: float  # 0 = no pacing of the account
    pair_burst: int  # 0 = no pair pacing
    pair_interval_s: float
    recovery_s: float

    @classmethod
    def media(cls, *, max_rate_per_s: float, recovery_s: float) -> PaceSettings:
        """An account's slow-media pace: a rate alone (the pair is the account pace's)."""
        return cls(
            max_rate_per_s=max_rate_per_s, pair_burst=0, pair_interval_s=0.0, recovery_s=recovery_s
        )

    @property
    def paced(self) -> bool:
        return self.max_rate_per_s > 0 or (self.pair_burst > 0 and self.pair_interval_s > 0)


@frozen
class Throttle:
    """What a throttled answer did to the pace: the account's rate now; whether this answer
    decreased it; whether it held it (its throttles are not the rate: the send waits alone).
    Neither: another answer decreased it within the debounce window, or nothing was paced."""

    rate_per_s: float
    decreased: bool
    held: bool = False


@frozen
class PaceStats:
    """The account's pace as Redis has it: the rate now, the calls and throttled answers
    counted since the last decrease, and the throttle share that caused it (None: none yet)."""

    rate_per_s: float
    calls: int
    throttled: int
    share_before: float | None


def _no_hold() -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class Script(Protocol):
    """A Lua script as the pacer runs it (`keys`, `args` -> the reply)."""

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]: ...


ScriptFactory = Callable[[str], Script]


class Pacer:
    """The pace of one sending account of one channel, in this process and shared with the others.

    `acquire(recipient)` returns once the send may go (the seconds it waited); `throttled(...)`
    feeds a throttled answer back. `sleep` waits (the router's returns early when the process
    stops); `hold` wraps the waits on the account's pace and the long waits of one recipient
    (the engine's `held()`); `debounce_s` is how long after a decrease throttled answers are one
    signal (tests shorten it); `scripts` makes a script of a Lua source (default: the client's
    `register_script`; the router's runs them through the process's auto-pipeline, so the
    decisions of many accounts share one round trip).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        account_key: str,
        settings: PaceSettings,
        sleep: Sleep = asyncio.sleep,
        hold: Hold = _no_hold,
        debounce_s: float = _DECREASE_DEBOUNCE_S,
        scripts: ScriptFactory | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.paced
        self._account_key = account_key
        self._sleep = sleep
        self._hold = hold
        self._debounce_us = debounce_s * 1e6
        self._turn = asyncio.Lock()
        # An unpaced account (rate 0) with pair pacing: a rate so high it never waits.
        self._max_rate = settings.max_rate_per_s or 1e9
        self._recovery = self._max_rate * (1 - _DECREASE_FACTOR) / max(settings.recovery_s, 1e-3)
        pair = settings.pair_burst > 0 and settings.pair_interval_s > 0
        self._pair_interval_us = settings.pair_interval_s * 1e6 if pair else 0.0
        # One below the provider's burst: a send arriving a little early still fits.
        self._pair_tolerance_us = max(0, settings.pair_burst - 2) * self._pair_interval_us
        script: ScriptFactory = scripts or redis.register_script
        self._acquire = script(_ACQUIRE)
        self._throttled = script(_THROTTLED)
        self._stats = script(_STATS)

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
            # Calls are counted only where throttles are judged: an account with a rate.
            self._debounce_us if self.settings.max_rate_per_s else -1,
        ]
        while True:
            # Queued behind this account's other sends, it waits on the account's pace: held
            # (kafka/held.py), so one busy account's queue does not eat the in-flight budget the
            # other accounts' sends need.
            queued = self._hold() if self._turn.locked() else contextlib.nullcontext()
            async with queued, self._turn:  # only the head of this process's queue asks Redis
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
                    async with self._hold():
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
        """A throttled answer: a pair throttle uses the pair up; any other slows the account,
        or holds its rate when its throttles are not the rate (the module's docstring)."""
        if pair and not self._pair_interval_us:
            pair = False  # no pair pacing configured: slow the account instead
        if not pair and not self.settings.max_rate_per_s:
            return Throttle(rate_per_s=0.0, decreased=False)  # no pace to slow: backoff alone
        rate_milli, decreased, held = await self._throttled(
            keys=[self._account_key, self.pair_key(recipient)],
            args=[
                self._max_rate,
                self._recovery,
                _DECREASE_FACTOR,
                self._max_rate * _MIN_RATE_FRACTION,
                self._debounce_us,
                math.ceil((retry_after_s or 0.0) * 1e6),
                self._pair_interval_us if pair else 0,
                self._pair_tolerance_us,
                _ACCOUNT_KEY_TTL_S,
                _JUDGE_MIN_CALLS,
                _CAME_BACK,
                _HALF,
                _APART_SD,
                _ABOVE_SD,
            ],
        )
        if pair:
            return Throttle(rate_per_s=0.0, decreased=False)
        return Throttle(
            rate_per_s=int(rate_milli) / 1000, decreased=bool(decreased), held=bool(held)
        )

    async def stats(self) -> PaceStats:
        """The account's pace as Redis has it now (one script call; for tests and operators)."""
        rate_milli, calls, throttled, share = await self._stats(
            keys=[self._account_key], args=[self._max_rate, self._recovery]
        )
        return PaceStats(
            rate_per_s=int(rate_milli) / 1000,
            calls=int(calls),
            throttled=int(throttled),
            share_before=None if int(share) < 0 else int(share) / 1e6,
        )
