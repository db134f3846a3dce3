"""Per-channel send markers in Redis: at most one send per (message, channel) in 24 h.

The key `message:dedup:{message_id}:{channel}` lives for `router.dedup_ttl_s` from the moment a
worker claims the send, and holds one of:

- `lease:{token}:{deadline}`: a worker is sending; it renews the deadline before each attempt;
- `sent:{provider_message_id}`: the provider accepted the message.

A worker that finds a live lease of another waits (a retry of the record). One that finds an
expired lease knows a worker died mid-send: the provider may or may not have the message. The
marker says so, instead of the key silently expiring and the message being sent again.
"""

from __future__ import annotations

import enum
import itertools
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline

_SENT = "sent:"
_LEASE = "lease:"

# Replace the value only while it is still the one we saw (a compare-and-set): renewing our
# lease, or taking over an expired one so that two workers cannot both decide its fate.
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# A lease token only has to differ from every other worker's: a random process prefix and a
# counter do that without a system call per message.
_PROCESS_TOKEN = secrets.token_hex(6)
_lease_numbers = itertools.count()


class State(enum.Enum):
    CLAIMED = "claimed"  # ours now: send it
    SENT = "sent"  # already accepted by the provider
    BUSY = "busy"  # another worker holds a live lease
    ORPHANED = "orphaned"  # a worker died mid-send; ours now, outcome unknown


@dataclass(frozen=True)
class Claim:
    state: State
    provider_message_id: str = ""
    retry_after_s: float = 0.0
    lease: str = ""


class SendMarkers:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, lease_s: float) -> None:
        self._redis = redis
        # The hot path (claim, mark sent) rides one pipeline per loop iteration.
        self._pipe = AutoPipeline(redis)
        self._ttl_s = ttl_s
        self._lease_s = lease_s
        self._swap = redis.register_script(_SWAP)
        self._release = redis.register_script(_RELEASE)

    def _new_lease(self, token: str) -> str:
        return f"{_LEASE}{token}:{time.time() + self._lease_s:.3f}"

    async def claim(self, key: str) -> Claim:
        lease = self._new_lease(f"{_PROCESS_TOKEN}{next(_lease_numbers):x}")
        if await self._pipe.execute("SET", key, lease, "NX", "EX", self._ttl_s):
            return Claim(State.CLAIMED, lease=lease)
        raw = await self._pipe.execute("GET", key)
        current = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if not current:  # expired between the two calls: try again from the top
            return await self.claim(key)
        if current.startswith(_SENT):
            return Claim(State.SENT, provider_message_id=current.removeprefix(_SENT))
        deadline = _deadline(current)
        remaining = deadline - time.time()
        if remaining > 0:
            return Claim(State.BUSY, retry_after_s=remaining)
        if await self._swap(keys=[key], args=[current, lease]):
            return Claim(State.ORPHANED, lease=lease)
        return Claim(State.BUSY, retry_after_s=1.0)  # someone else took it over just now

    async def peek(self, key: str) -> Claim | None:
        """SENT or BUSY (another worker's live lease) without claiming; None when the send is
        free to be claimed. Lets a paced send skip its wait for a message already sent."""
        raw = await self._pipe.execute("GET", key)
        current = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        if current.startswith(_SENT):
            return Claim(State.SENT, provider_message_id=current.removeprefix(_SENT))
        if current and (remaining := _deadline(current) - time.time()) > 0:
            return Claim(State.BUSY, retry_after_s=remaining)
        return None

    async def renew(self, key: str, lease: str) -> str | None:
        """A fresh lease before another attempt; None if the lease is no longer ours."""
        token = lease.removeprefix(_LEASE).split(":", 1)[0]
        fresh = self._new_lease(token)
        return fresh if await self._swap(keys=[key], args=[lease, fresh]) else None

    async def mark_sent(self, key: str, provider_message_id: str) -> None:
        await self._pipe.execute("SET", key, f"{_SENT}{provider_message_id}", "EX", self._ttl_s)

    async def release(self, key: str, lease: str) -> None:
        """Forget a failed send, so a replay from the DLQ may try again."""
        await self._release(keys=[key], args=[lease])


def _deadline(value: str) -> float:
    try:
        return float(value.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0.0  # unreadable marker: treat as expired
