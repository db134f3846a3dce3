"""`send --wait`: one message followed to READ or FAILED on every channel, as it happens.

The truth is `message_status_history` (one row per message, channel and status, written by the
status updater), so that is what is read: each new row is reported once, in the order it was
written. What wakes the reader is the status updater's own note on the Redis channel
`conversation:{id}` (published after each new row); pub/sub is best effort, so the history is
also read every `poll_interval_s` (0.5 s) whatever comes. A channel is done at READ or FAILED.

A channel that has not reached the provider (no SENT, DELIVERED, READ or FAILED yet) may be held
by a router whose channel is paused (an expired token, ...): while one waits, the workers'
`/readyz` are read every `readiness_interval_s` (2 s), and a paused channel is said once, with
the provider's reason. A worker that does not answer is said once too (`send` works without
reaching them; it just cannot tell). At the deadline the reason names, per channel, how far it
got, and whether the outbox event was ever published (no outbox role running).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from chat4all_workers.accounts.model import DEFAULT_KEY
from chat4all_workers.config import Settings
from chat4all_workers.frozen import frozen

READ, FAILED = "READ", "FAILED"
# Statuses only the provider's side produces: a channel with one of them is past the router.
PAST_ROUTER = frozenset({"SENT", "DELIVERED", READ, FAILED})
_PROBE_TIMEOUT_S = 2.0


@frozen
class StatusEvent:
    """One row of `message_status_history`."""

    row_id: int
    at: datetime
    channel: str
    status: str
    provider_message_id: str | None
    reason: str | None
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "channel": self.channel,
            "status": self.status,
            "provider_message_id": self.provider_message_id,
            "reason": self.reason,
            "details": self.details,
        }


@dataclass
class FollowResult:
    outcome: str  # "read" | "failed" | "timeout"
    reason: str
    elapsed_s: float
    statuses: list[StatusEvent] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "elapsed_s": round(self.elapsed_s, 3),
            "statuses": [s.as_dict() for s in self.statuses],
            "notices": self.notices,
        }


async def history(
    conn: asyncpg.Connection | asyncpg.Pool, message_id: uuid.UUID, *, after_row: int = 0
) -> list[StatusEvent]:
    """The message's history rows written after `after_row`, in the order they were recorded."""
    rows = await conn.fetch(
        """SELECT id, channel, status, details::text AS details, "timestamp"
           FROM message_status_history WHERE message_id = $1 AND id > $2 ORDER BY id""",
        message_id,
        after_row,
    )
    return [_event(r) for r in rows]


def _event(row: asyncpg.Record) -> StatusEvent:
    details = orjson.loads(row["details"]) if row["details"] else {}
    details = details if isinstance(details, dict) else {}
    provider_id = details.get("provider_message_id")
    reason = details.get("reason")
    return StatusEvent(
        row_id=row["id"],
        at=row["timestamp"],
        channel=row["channel"],
        status=row["status"],
        provider_message_id=provider_id if isinstance(provider_id, str) else None,
        reason=reason if isinstance(reason, str) else None,
        details=details,
    )


def status_line(event: StatusEvent) -> str:
    """`10:30:01.204  whatsapp   SENT       wamid.HBgM...` (local time); FAILED adds the reason."""
    local = event.at.astimezone()
    line = (
        f"{local:%H:%M:%S}.{local.microsecond // 1000:03d}  {event.channel:<9}  "
        f"{event.status:<9}  {event.provider_message_id or '-'}"
    )
    if event.status == FAILED and event.reason:
        line += f"  {event.reason}"
    return line


class _Progress:
    """How far each channel got: the statuses seen, and whether it is done."""

    def __init__(self, channels: Sequence[str]) -> None:
        self.seen: dict[str, list[str]] = {c: [] for c in channels}
        self.failures: dict[str, str] = {}

    def add(self, event: StatusEvent) -> None:
        self.seen.setdefault(event.channel, []).append(event.status)
        if event.status == FAILED:
            self.failures[event.channel] = event.reason or "no reason given"

    def done(self) -> bool:
        return all(READ in s or FAILED in s for s in self.seen.values())

    def outcome(self, channels: Sequence[str]) -> tuple[str, str]:
        """Once done: ("failed", which and why) when a channel FAILED without READ, else
        ("read", ...)."""
        failed = {c: r for c, r in self.failures.items() if READ not in self.seen[c]}
        if failed:
            return "failed", "; ".join(f"{c} FAILED: {r}" for c, r in failed.items())
        return "read", f"READ on every channel ({', '.join(channels)})"

    def stuck_before_the_provider(self) -> list[str]:
        return [c for c, s in self.seen.items() if not PAST_ROUTER.intersection(s)]

    def furthest(self, channel: str) -> str:
        statuses = self.seen.get(channel, [])
        if READ in statuses:
            return READ
        if FAILED in statuses:
            return f"FAILED ({self.failures[channel]})"
        return statuses[-1] if statuses else "no status yet"


class _Pauses:
    """The router's paused accounts the message is sent from, from the workers' `/readyz`, each
    said once."""

    def __init__(
        self,
        workers: Sequence[str],
        notice: Callable[[str], None],
        accounts: Mapping[str, str],
    ) -> None:
        self._workers = list(workers)
        self._notice = notice
        self._accounts = accounts
        self._silent: set[str] = set()
        self.paused: dict[str, str] = {}  # channel -> the provider's reason

    async def check(self, http: aiohttp.ClientSession, channels: Sequence[str]) -> None:
        readings = await asyncio.gather(*(router_accounts(http, url) for url in self._workers))
        now_paused: dict[str, str] = {}
        for url, reading in zip(self._workers, readings, strict=True):
            if reading is None:
                if url not in self._silent:
                    self._silent.add(url)
                    self._notice(
                        f"workers at {url} do not answer (/readyz): cannot tell whether a "
                        "channel is paused"
                    )
                continue
            for channel in channels:
                ref = sender_ref(channel, self._accounts.get(channel))
                if (reason := paused_reason(reading, ref)) is not None:
                    now_paused.setdefault(channel, reason)
        for channel, reason in now_paused.items():
            if channel not in self.paused:
                self._notice(f"{channel}: paused at the router: {reason}")
        for channel in set(self.paused) - set(now_paused):
            self._notice(f"{channel}: resumed at the router")
        self.paused = now_paused


def sender_ref(channel: str, account: str | None) -> str:
    """How /readyz names the account that sends on `channel` (`whatsapp/acme`)."""
    return f"{channel}/{account or DEFAULT_KEY}"


def paused_reason(accounts: dict[str, Any], ref: str) -> str | None:
    """The provider's reason when the account `ref` is paused in a `/readyz` `accounts`
    section."""
    state = accounts.get(ref)
    if isinstance(state, dict) and state.get("state") == "paused":
        return str(state.get("reason") or "no reason given")
    return None


async def router_accounts(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """A worker's `/readyz` `accounts` section (the router's sending accounts: `state`,
    `reason`, `since`, `held`); {} for a worker without a router, None when it does not
    answer."""
    try:
        async with http.get(url.rstrip("/") + "/readyz") as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    accounts = body.get("accounts") if isinstance(body, dict) else None
    return accounts if isinstance(accounts, dict) else {}


async def follow(
    settings: Settings,
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    conversation_id: int,
    channels: Sequence[str],
    event_id: uuid.UUID | None,
    timeout_s: float,
    workers: Sequence[str],
    on_status: Callable[[StatusEvent], None],
    on_notice: Callable[[str], None],
    accounts: Mapping[str, str] | None = None,
    poll_interval_s: float = 0.5,
    readiness_interval_s: float = 2.0,
) -> FollowResult:
    """Report each new status until every channel is READ or FAILED, or `timeout_s` passed.
    `accounts`: the message's account per channel (absent: the default), whose pause at the
    router is reported."""
    started = time.monotonic()
    deadline = started + timeout_s
    progress = _Progress(channels)
    result = FollowResult(outcome="timeout", reason="", elapsed_s=0.0)

    def notice(text: str) -> None:
        result.notices.append(text)
        on_notice(text)

    pauses = _Pauses(workers, notice, accounts or {})
    next_check = started + min(1.0, readiness_interval_s)
    last_row = 0
    async with (
        _wake_ups(settings, conversation_id) as woken,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)) as http,
    ):
        while True:
            for event in await history(conn, message_id, after_row=last_row):
                last_row = event.row_id
                progress.add(event)
                result.statuses.append(event)
                on_status(event)
            now = time.monotonic()
            if progress.done() or now >= deadline:
                break
            stuck = progress.stuck_before_the_provider()
            if stuck and workers and now >= next_check:
                next_check = now + readiness_interval_s
                await pauses.check(http, stuck)
            await woken(min(poll_interval_s, max(0.0, deadline - time.monotonic())))
    result.elapsed_s = time.monotonic() - started
    if progress.done():
        result.outcome, result.reason = progress.outcome(channels)
    else:
        result.reason = await _why_not_done(conn, progress, pauses, channels, event_id)
    return result


async def _why_not_done(
    conn: asyncpg.Connection,
    progress: _Progress,
    pauses: _Pauses,
    channels: Sequence[str],
    event_id: uuid.UUID | None,
) -> str:
    parts = []
    for channel in channels:
        part = f"{channel}: {progress.furthest(channel)}"
        if channel in pauses.paused:
            part += f", paused at the router ({pauses.paused[channel]})"
        parts.append(part)
    if event_id is not None and progress.stuck_before_the_provider():
        published = await conn.fetchval(
            "SELECT published FROM outbox_events WHERE id = $1", event_id
        )
        if published is False:
            parts.append("its outbox event is not published yet (is the outbox role running?)")
    return "; ".join(parts)


@contextlib.asynccontextmanager
async def _wake_ups(
    settings: Settings, conversation_id: int
) -> AsyncIterator[Callable[[float], Awaitable[None]]]:
    """A `wait(timeout_s)` that returns early when the status updater announces a status of
    the conversation on Redis; without Redis, a plain wait (the poll still reads everything)."""
    client = aioredis.from_url(settings.redis.url.get())
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    subscribed = False
    try:
        with contextlib.suppress(redis_errors.RedisError, OSError):
            channel = f"{settings.redis.key_prefix}conversation:{conversation_id}"
            await pubsub.subscribe(channel)
            subscribed = True

        async def wait(timeout_s: float) -> None:
            nonlocal subscribed
            if not subscribed:
                await asyncio.sleep(timeout_s)
                return
            try:
                await pubsub.get_message(timeout=timeout_s)
            except (redis_errors.RedisError, OSError):
                subscribed = False
                await asyncio.sleep(timeout_s)

        yield wait
    finally:
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await pubsub.aclose()
        await client.aclose()
