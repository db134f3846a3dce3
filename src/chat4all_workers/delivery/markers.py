"""Per-channel send markers in Redis: at most one send per (message, channel) in 24 h.

The key `message:dedup:{message_id}:{channel}` (`marker_key`) lives for `delivery.dedup_ttl_s` from
the moment a worker claims the send, and holds one of:

- `lease:{token}:{deadline}`: a worker is sending; it renews the deadline before each attempt
  (and while it waits for the provider's word, below);
- `sent:{provider_message_id}`: the provider accepted the message. Written by the router from
  the provider's answer, or by the webhooks role from the provider's status webhooks (the
  provider's word: every status of a message, sent, delivered, read or failed, proves it took
  the send), whichever comes first; never replaced;
- `failed:{error_type}:{topic}:{partition}:{offset}`: a worker gave up on this channel (FAILED,
  dead-lettered) while handling the record at that position. Terminal for THAT record: a
  redelivery of it (a crash before its commit, an in-place retry, a rebalance) reads "already
  given up", emits FAILED again and sends nothing, instead of sending a message that was
  reported FAILED. Any other record of the message (a `dlq replay`, re-published at a new
  offset; a duplicate from the outbox) takes it over as a fresh claim: that is what a replay is
  for. The provider's word turns it into `sent:` (the send that was given up on had reached it).
- `failed:{error_type}:{topic}:{partition}:{offset}#{provider_message_id}`: the provider took
  that record's send and failed it later, by webhook (a `failed` status: the webhooks role,
  intake/failures.py, dead-lettered the record, or published it again as `resend` for a
  throttled or transient failure). For that record the send is over: a redelivery sends nothing
  and says nothing; another record (a replay, the copy published again) takes it over. Never
  turned into `sent:` by a status of the same provider id arriving late (webhooks come in any
  order).
- anything else: a marker this code did not write (the platform's original router stored a flag
  of its own under the same key, docs/migrating.md). That worker handled the message: read as
  sent, never in doubt, never sent again.

A worker that finds a live lease of another waits (a retry of the record). One that finds an
expired lease knows a worker died mid-send (or gave up waiting for an answer): the provider may
or may not have the message, so the claim says ORPHANED and the router waits for the provider's
word before it decides (roles/router.py). The marker is never deleted while the provider may
have the message or once a worker gave up on it; it is released (deleted) only when the
provider certainly did not take it and the same record tries again (a throttled or account
answer, a send held by a paused channel, a cancel before anything was written).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import secrets
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline, PipedScript, retrieved
from chat4all_workers.frozen import frozen

_SENT = "sent:"
_LEASE = "lease:"
_FAILED = "failed:"

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
# Give up on a send: `failed:...` replaces our lease (ARGV[1]; '' = the key must be absent),
# never a `sent:` (the provider has it after all). Returns what the key holds afterwards.
_GIVE_UP = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 5) == 'sent:' then return current end
if (ARGV[1] == '' and not current) or current == ARGV[1] then
  if current then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  else
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  end
  return ARGV[2]
end
return current or ''
"""
# The provider's word (the webhooks role): `sent:{id}` replaces a lease, a `failed:`, a foreign
# marker or nothing, and leaves a `sent:` alone. The TTL is kept (a marker lives
# delivery.dedup_ttl_s from its claim); a new key, or one without a TTL, gets ARGV[2]. Returns what
# the key held before: sent, lease, failed, other or absent.
_VERDICT = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 5) == 'sent:' then return 'sent' end
if current and string.sub(current, 1, 7) == 'failed:' and string.find(current, '#', 1, true) then
  return 'failed'
end
local marker = 'sent:' .. ARGV[1]
if current and redis.call('PTTL', KEYS[1]) > 0 then
  redis.call('SET', KEYS[1], marker, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], marker, 'EX', ARGV[2])
end
if not current then return 'absent' end
if string.sub(current, 1, 6) == 'lease:' then return 'lease' end
if string.sub(current, 1, 7) == 'failed:' then return 'failed' end
return 'other'
"""


# A lease token only has to differ from every other worker's: a random process prefix and a
# counter do that without a system call per message.
_PROCESS_TOKEN = secrets.token_hex(6)
_lease_numbers = itertools.count()


def marker_key(message_id: str, channel: str) -> str:
    """The dedup key of (message, channel), before `Resources.redis_key` prefixes it."""
    return f"message:dedup:{message_id}:{channel}"


class Kind(enum.Enum):
    ABSENT = "absent"
    LEASE = "lease"
    SENT = "sent"
    FAILED = "failed"
    FOREIGN = "foreign"  # not written by this code: the original router's flag


@frozen
class Marker:
    """A marker's value, read."""

    kind: Kind
    value: str = ""
    provider_message_id: str = ""  # SENT
    deadline: float = 0.0  # LEASE (Unix time; 0 for an unreadable one: expired)
    error_type: str = ""  # FAILED
    origin: str = ""  # FAILED: the record that gave up, "{topic}:{partition}:{offset}"
    # FAILED by the provider, later (its status webhook), for this provider id: the webhooks
    # role ended the send; "" for a router's give-up.
    failed_by_provider: str = ""


def read_marker(raw: object) -> Marker:
    value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    if not value:
        return Marker(Kind.ABSENT)
    if value.startswith(_SENT):
        return Marker(Kind.SENT, value, provider_message_id=value.removeprefix(_SENT))
    if value.startswith(_LEASE):
        return Marker(Kind.LEASE, value, deadline=_deadline(value))
    if value.startswith(_FAILED):
        error_type, _, rest = value.removeprefix(_FAILED).partition(":")
        origin, _, provider_id = rest.partition("#")
        return Marker(
            Kind.FAILED,
            value,
            error_type=error_type,
            origin=origin,
            failed_by_provider=provider_id,
        )
    return Marker(Kind.FOREIGN, value)


class State(enum.Enum):
    CLAIMED = "claimed"  # ours now: send it
    SENT = "sent"  # already accepted by the provider (`foreign`: the original router's flag)
    BUSY = "busy"  # another worker holds a live lease
    ORPHANED = "orphaned"  # a worker stopped mid-send; ours now, outcome unknown
    GIVEN_UP = "given_up"  # this record gave up on it before: FAILED again, send nothing
    ENDED = "ended"  # the provider failed this record's send later; the webhooks role ended it


@frozen
class Claim:
    state: State
    provider_message_id: str = ""
    retry_after_s: float = 0.0
    lease: str = ""
    error_type: str = ""  # GIVEN_UP: why it was given up
    foreign: bool = False  # SENT by a marker this code did not write


@frozen(slots=True)
class Asked:
    """A claim asked for (`SendMarkers.ask`), its reply not read yet."""

    key: str
    lease: str
    reply: asyncio.Future[Any]


class SendMarkers:
    def __init__(
        self, redis: aioredis.Redis, pipe: AutoPipeline, *, ttl_s: int, lease_s: float
    ) -> None:
        self._redis = redis
        # The hot path (claim, mark sent) rides the process's pipeline: one per loop iteration.
        self.pipe = pipe
        self._ttl_s = ttl_s
        self.lease_s = lease_s
        self._swap = PipedScript(self.pipe, redis, _SWAP)
        self._release = PipedScript(self.pipe, redis, _RELEASE)
        self._give_up = PipedScript(self.pipe, redis, _GIVE_UP)

    def _new_lease(self, token: str) -> str:
        return f"{_LEASE}{token}:{time.time() + self.lease_s:.3f}"

    def ask(self, key: str) -> Asked:
        """A claim's `SET NX`, on its way when this returns: issued with another command of
        the send (its window read) it costs no round trip of its own; `claim(..., asked=)`
        reads its reply. Asked and not claimed after all: `release` the lease, and read the
        reply (`retrieved`) so that asyncio does not log an error reply nobody awaited (a
        callback on every reply instead was an event-loop turn per send)."""
        lease = self._new_lease(f"{_PROCESS_TOKEN}{next(_lease_numbers):x}")
        reply = self.pipe.execute("SET", key, lease, "NX", "EX", self._ttl_s)
        return Asked(key, lease, reply)

    async def claim(self, key: str, origin: str, *, asked: Asked | None = None) -> Claim:
        """Claim the send for the record at `origin` ("{topic}:{partition}:{offset}")."""
        if asked is None:
            asked = self.ask(key)
        lease = asked.lease
        if await asked.reply:
            return Claim(State.CLAIMED, lease=lease)
        marker = await self.read(key)
        if marker.kind is Kind.ABSENT:  # expired between the two calls: try again from the top
            return await self.claim(key, origin)
        if marker.kind is Kind.FAILED and marker.origin != origin:
            # Given up by another record (this one is a replay): a fresh claim.
            if await self._swap(keys=[key], args=[marker.value, lease]):
                return Claim(State.CLAIMED, lease=lease)
            return Claim(State.BUSY, retry_after_s=1.0)  # someone else took it over just now
        if marker.kind is Kind.LEASE and marker.deadline <= time.time():
            if await self._swap(keys=[key], args=[marker.value, lease]):
                return Claim(State.ORPHANED, lease=lease)
            return Claim(State.BUSY, retry_after_s=1.0)
        seen = _seen(marker, origin)
        assert seen is not None
        return seen

    def look(self, key: str) -> asyncio.Future[Any]:
        """The marker's `GET`, on its way when this returns (for `peek(..., looked=)`)."""
        reply = self.pipe.execute("GET", key)
        reply.add_done_callback(retrieved)
        return reply

    async def peek(
        self, key: str, origin: str, *, looked: asyncio.Future[Any] | None = None
    ) -> Claim | None:
        """SENT, GIVEN_UP or BUSY (another worker's live lease) without claiming; None when the
        send is free to be claimed. Lets a paced send skip its wait for a message it will not
        send."""
        return _seen(read_marker(await (looked or self.look(key))), origin)

    async def read(self, key: str) -> Marker:
        return read_marker(await self.pipe.execute("GET", key))

    async def renew(self, key: str, lease: str) -> str | None:
        """A fresh lease before another attempt; None if the lease is no longer ours."""
        token = lease.removeprefix(_LEASE).split(":", 1)[0]
        fresh = self._new_lease(token)
        return fresh if await self._swap(keys=[key], args=[lease, fresh]) else None

    def mark_sent(self, key: str, provider_message_id: str) -> asyncio.Future[Any]:
        """The `sent:` mark, on its way when this returns (awaited: Redis's reply), so that a
        caller can do something else while Redis records it."""
        return self.pipe.execute("SET", key, f"{_SENT}{provider_message_id}", "EX", self._ttl_s)

    async def release(self, key: str, lease: str) -> None:
        """Forget a send the provider certainly did not take, for the same record to try again."""
        await self._release(keys=[key], args=[lease])

    async def abandon(self, key: str, lease: str) -> None:
        """Leave a send in doubt to the next owner at once: our lease, expired now (rather than
        at its deadline), so its next claim is ORPHANED and waits for the provider's word."""
        token = lease.removeprefix(_LEASE).split(":", 1)[0]
        await self._swap(keys=[key], args=[lease, f"{_LEASE}{token}:0"])

    async def give_up(self, key: str, lease: str | None, *, error_type: str, origin: str) -> Marker:
        """Mark the send given up by the record at `origin`, replacing our lease (None: the key
        must be absent, as after a released throttled send); what the key holds afterwards: our
        `failed:`, a `sent:` (the provider's word came first: it has the message), or
        another worker's marker (left alone)."""
        failed = f"{_FAILED}{error_type}:{origin}"
        now = await self._give_up(keys=[key], args=[lease or "", failed, self._ttl_s])
        return read_marker(now)


# The provider failed a send it took (its `failed` status): `failed:...#{pid}` (ARGV[2]) unless
# the marker says another send of the message is what counts now. ARGV: pid, value, TTL s.
# -> failed (act on it), duplicate (already done), stale (another send counts), given_up (the
# router gave up on it before: it dead-lettered the record already).
_PROVIDER_FAILED = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then return 'duplicate' end
if current then
  if string.sub(current, 1, 5) == 'sent:' and current ~= 'sent:' .. ARGV[1] then return 'stale' end
  if string.sub(current, 1, 7) == 'failed:' then
    if string.find(current, '#', 1, true) then return 'stale' end
    return 'given_up'
  end
end
if current and redis.call('PTTL', KEYS[1]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 'failed'
"""


class ProviderVerdicts:
    """The webhooks role's side: the provider's word recorded in the dedup markers.

    Through an auto-pipeline (EVALSHA, the script loaded once): the markers of concurrent
    requests go to Redis together, one round trip per loop iteration. Through redis-py's own
    pipeline per request, the webhooks role spent twice the CPU per status (bench/webhooks.py).
    """

    def __init__(self, redis: aioredis.Redis, pipe: AutoPipeline, *, ttl_s: int) -> None:
        self._redis = redis
        self._pipe = pipe
        self._ttl_s = ttl_s
        self._verdict = PipedScript(self._pipe, redis, _VERDICT)
        self._failed = PipedScript(self._pipe, redis, _PROVIDER_FAILED)

    async def provider_failed(
        self, key: str, provider_message_id: str, *, error_type: str, origin: str
    ) -> str:
        """The provider failed the send of the record at `origin` later: failed, duplicate,
        stale or given_up (`_PROVIDER_FAILED`)."""
        value = f"{_FAILED}{error_type}:{origin}#{provider_message_id}"
        found = await self._failed(keys=[key], args=[provider_message_id, value, self._ttl_s])
        return found.decode() if isinstance(found, bytes) else str(found)

    async def record(self, entries: Sequence[tuple[str, str]]) -> list[str]:
        """For each (marker key, provider message id): the marker becomes `sent:{id}` unless it
        already is. Returns what each marker held before (sent, lease, failed, other, absent)."""
        if not entries:
            return []
        found = await self._verdict.many([([key], [pid, self._ttl_s]) for key, pid in entries])
        for f in found:
            if isinstance(f, Exception):
                raise f
        return [f.decode() if isinstance(f, bytes) else str(f) for f in found]


def _seen(marker: Marker, origin: str) -> Claim | None:
    """What a marker means for a send that does not hold it; None when it is free to claim."""
    if marker.kind is Kind.SENT:
        return Claim(State.SENT, provider_message_id=marker.provider_message_id)
    if marker.kind is Kind.FOREIGN:
        return Claim(State.SENT, foreign=True)
    if marker.kind is Kind.FAILED and marker.origin == origin:
        if marker.failed_by_provider:
            return Claim(State.ENDED, error_type=marker.error_type)
        return Claim(State.GIVEN_UP, error_type=marker.error_type)
    if marker.kind is Kind.LEASE and (remaining := marker.deadline - time.time()) > 0:
        return Claim(State.BUSY, retry_after_s=remaining)
    return None


def _deadline(value: str) -> float:
    try:
        return float(value.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0.0  # unreadable lease: treat as expired
