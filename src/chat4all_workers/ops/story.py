"""`chat4all-workers message ID`: all that is known about one message, side by side.

An operator's most common question, "what happened to message X?", used to take four tools:
the JSON logs, `psql` for the status history, `kafka-console-consumer` for the DLQ with its
headers, `redis-cli` for the dedup markers. This reads them all, and changes nothing:

- its `messages` row, its `message_status_history` (in time order, with the provider's ids and a
  FAILED's reason) and its outbox event(s), in one READ ONLY transaction with a statement
  timeout (`outbox_events` has no index on the message id: a huge table is cut short, and said);
- per channel its dedup marker `message:dedup:{id}:{channel}` (roles/dedup.py), decoded: absent,
  a lease (which worker holds it and until when; expired, the send is in doubt since then), sent
  (the provider's id), failed (the error type and the record that gave up), or foreign; with
  when it was written (its TTL counts down from `delivery.dedup_ttl_s`, set at the claim and
  again at the `sent:` mark);
- for Instagram, whether the provider index still maps its mid back to it (its read receipt is
  found only then);
- its DLQ records, from ONE partition and a bounded slice of it (ops/dead_letters.py);
- for a channel not past the router yet (no SENT, DELIVERED, READ or FAILED), the router's
  channel state now, from the workers' `/readyz` (paused, with the provider's reason: its send
  is held, which no other source shows).

Each source is read on its own, time-boxed: one that fails is reported, and the rest is still
shown. A message is "not found" when no source knows it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

from chat4all_workers.config import CHANNELS, Settings
from chat4all_workers.delivery.markers import Kind, Marker, marker_key, read_marker
from chat4all_workers.delivery.provider_index import ProviderIndex
from chat4all_workers.formats.message import ALL
from chat4all_workers.ops.dead_letters import DEFAULT_LIMIT, DlqSearch, find_dead_letters
from chat4all_workers.ops.follow import (
    PAST_ROUTER,
    StatusEvent,
    history,
    router_accounts,
    sender_ref,
)
from chat4all_workers.roles.router import RouterSettings

_TIMEOUT_S = 20.0
_PROBE_TIMEOUT_S = 3.0
_STATEMENT_TIMEOUT_MS = 5000
# A lease token is the worker process's random token (12 hex digits, roles/dedup.py) followed
# by its send counter: the first part names the worker.
_PROCESS_TOKEN_CHARS = 12


@dataclass
class MarkerView:
    """A dedup marker, decoded for a person."""

    channel: str
    key: str
    state: str  # absent | lease | in_doubt | sent | failed | foreign
    summary: str
    value: str | None = None
    ttl_s: float | None = None
    written_at: str | None = None  # when its TTL was last set: the claim, or the `sent:` mark
    provider_message_id: str | None = None
    worker: str | None = None
    deadline: str | None = None
    error_type: str | None = None
    origin: str | None = None


@dataclass
class IndexEntry:
    channel: str
    provider_message_id: str
    maps_to: str | None  # our message id, or None when the index does not know the mid


@dataclass
class RouterChannel:
    """A channel's state at one worker's router, now (its `/readyz`)."""

    channel: str
    worker: str
    state: str
    reason: str | None
    since: str | None
    held: int | None


@dataclass
class Story:
    message_id: str
    row: dict[str, Any] | None = None
    history: list[StatusEvent] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    markers: list[MarkerView] = field(default_factory=list)
    provider_index: list[IndexEntry] = field(default_factory=list)
    dlq: DlqSearch | None = None
    router: list[RouterChannel] = field(default_factory=list)
    workers_silent: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(
            self.row
            or self.history
            or self.outbox
            or any(m.state != "absent" for m in self.markers)
            or (self.dlq and self.dlq.records)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "found": self.found,
            "row": self.row,
            "history": [h.as_dict() for h in self.history],
            "markers": [asdict(m) for m in self.markers],
            "provider_index": [asdict(e) for e in self.provider_index],
            "dlq": None if self.dlq is None else self.dlq.as_dict(),
            "outbox": self.outbox,
            "router": [asdict(r) for r in self.router],
            "workers_silent": self.workers_silent,
            "errors": self.errors,
        }


async def collect_story(
    settings: Settings,
    message_id: uuid.UUID,
    *,
    dlq_limit: int = DEFAULT_LIMIT,
    workers: Sequence[str] = (),
) -> Story:
    story = Story(message_id=str(message_id))
    await _guard(story, "postgres", _from_postgres(settings, message_id, story))
    channels = _channels(story, settings)
    await asyncio.gather(
        _guard(story, "redis", _from_redis(settings, story, channels)),
        _guard(story, "kafka", _from_dlq(settings, story, dlq_limit)),
        _guard(story, "workers", _from_workers(story, channels, workers)),
    )
    return story


async def _guard(story: Story, name: str, probe: Any) -> None:
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            await probe
    except Exception as exc:  # noqa: BLE001 - a source that fails is reported, the rest shown
        story.errors[name] = f"{type(exc).__name__}: {exc}"


async def _from_postgres(settings: Settings, message_id: uuid.UUID, story: Story) -> None:
    conn = await asyncpg.connect(settings.postgres.url.get(), timeout=10)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {_STATEMENT_TIMEOUT_MS}")
            row = await conn.fetchrow(
                """SELECT id::text AS id, conversation_id, sender_id, payload::text AS payload,
                          channels::text AS channels, status, created_at, updated_at
                   FROM messages WHERE id = $1""",
                message_id,
            )
            if row is not None:
                story.row = {
                    "id": row["id"],
                    "conversation_id": row["conversation_id"],
                    "sender_id": row["sender_id"],
                    "payload": orjson.loads(row["payload"]),
                    "channels": orjson.loads(row["channels"]),
                    "status": row["status"],
                    "created_at": iso(row["created_at"]),
                    "updated_at": iso(row["updated_at"]),
                }
            # In the order recorded: WhatsApp's times are whole seconds, so a DELIVERED may
            # carry an earlier time than the SENT the router recorded before it.
            story.history = await history(conn, message_id)
        # Its own statement: a table too big to scan in time loses this section only.
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {_STATEMENT_TIMEOUT_MS}")
            try:
                story.outbox = await _outbox_events(conn, message_id, story.row)
            except asyncpg.QueryCanceledError:
                story.errors["outbox"] = (
                    f"outbox_events not searched within {_STATEMENT_TIMEOUT_MS // 1000} s "
                    "(no index on the message id)"
                )
    finally:
        await conn.close()


async def _outbox_events(
    conn: asyncpg.Connection, message_id: uuid.UUID, row: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The message's events: `message.*` events whose payload names it (narrowed to its
    conversation's aggregate when the row says which)."""
    narrow = "AND aggregate_id = $2" if row is not None else "AND $2::text IS NULL"
    rows = await conn.fetch(
        f"""SELECT id::text AS id, seq, aggregate_type, aggregate_id, event_type, topic,
                   published, published_at, created_at, attempts, next_attempt_at, last_error,
                   (payload->'account')::text AS account
            FROM outbox_events
            WHERE event_type LIKE 'message.%' AND lower(payload->>'message_id') = $1 {narrow}
            ORDER BY seq""",
        str(message_id),
        None if row is None else str(row["conversation_id"]),
    )
    events = [
        {
            **{k: r[k] for k in ("id", "seq", "aggregate_type", "aggregate_id", "event_type")},
            "topic": r["topic"],
            "published": r["published"],
            "published_at": iso(r["published_at"]),
            "created_at": iso(r["created_at"]),
            "attempts": r["attempts"],
            "next_attempt_at": iso(r["next_attempt_at"]),
            "last_error": r["last_error"],
            # The sending account the event names (absent: each channel's default).
            "account": None if r["account"] is None else orjson.loads(r["account"]),
        }
        for r in rows
    ]
    if not events and row is not None:  # an event keyed differently: look wider
        return await _outbox_events(conn, message_id, None)
    return events


def _channels(story: Story, settings: Settings) -> list[str]:
    """The message's channels (its row's; `all` as the router expands it), else every channel."""
    listed = story.row.get("channels") if story.row else None
    channels: list[str] = []
    for name in listed if isinstance(listed, list) else [ALL]:
        expanded = settings.section(RouterSettings).all_channels if name == ALL else [str(name)]
        channels += [c for c in expanded if c not in channels]
    channels += [e.channel for e in story.history if e.channel not in channels and e.channel]
    return channels or list(CHANNELS)


async def _from_redis(settings: Settings, story: Story, channels: Sequence[str]) -> None:
    prefix = settings.redis.key_prefix
    client = aioredis.from_url(settings.redis.url.get(), socket_timeout=10)
    try:
        keys = [prefix + marker_key(story.message_id, c) for c in channels]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        now = time.time()
        for n, channel in enumerate(channels):
            raw, pttl = replies[2 * n], replies[2 * n + 1]
            story.markers.append(
                _marker_view(settings, story, channel, keys[n], raw, pttl, now=now)
            )
        await _index(settings, story, client, prefix)
    finally:
        await client.aclose()


def _marker_view(
    settings: Settings,
    story: Story,
    channel: str,
    key: str,
    raw: bytes | None,
    pttl: int,
    *,
    now: float,
) -> MarkerView:
    marker = read_marker(raw)
    view = MarkerView(channel=channel, key=key, state=marker.kind.value, summary="")
    if marker.kind is Kind.ABSENT:
        view.summary = (
            "no marker: no router claimed this send (or it is older than delivery.dedup_ttl_s)"
        )
        return view
    view.value = marker.value
    if pttl >= 0:
        view.ttl_s = pttl / 1000
        written = now + view.ttl_s - settings.delivery.dedup_ttl_s
        view.written_at = iso(datetime.fromtimestamp(written, UTC))
    if marker.kind is Kind.SENT:
        view.provider_message_id = marker.provider_message_id
        view.summary = f"sent: the provider has it as {marker.provider_message_id}"
    elif marker.kind is Kind.FAILED:
        view.error_type, view.origin = marker.error_type, marker.origin
        reason = next(
            (e.reason for e in story.history if e.channel == channel and e.status == "FAILED"),
            None,
        )
        view.summary = f"failed: {marker.error_type}, given up by the record at {marker.origin}"
        if reason:
            view.summary += f": {reason}"
    elif marker.kind is Kind.LEASE:
        _lease(view, marker, now=now)
    else:
        view.summary = (
            f"foreign marker {marker.value[:60]!r}: not written by these workers (the original "
            "router's flag): read as sent, never sent again"
        )
    return view


def _lease(view: MarkerView, marker: Marker, *, now: float) -> None:
    """A lease marker: who holds it and until when; expired (or handed over), in doubt."""
    token = marker.value.removeprefix("lease:").rsplit(":", 1)[0]
    worker, send = token[:_PROCESS_TOKEN_CHARS], token[_PROCESS_TOKEN_CHARS:]
    view.worker = worker
    who = f"worker {worker}" + (f" (its send {send})" if send else "")
    if marker.deadline <= 0:
        view.state = "in_doubt"
        view.summary = (
            f"in doubt: {who} stopped mid-send and handed it over; the next router waits "
            "for the provider's word (router.in_doubt_window_s)"
        )
        return
    deadline = datetime.fromtimestamp(marker.deadline, UTC)
    view.deadline = iso(deadline)
    if marker.deadline > now:
        view.summary = (
            f"leased by {who} until {iso(deadline)} "
            f"(for {marker.deadline - now:.0f} s more): a send is under way"
        )
    else:
        view.state = "in_doubt"
        view.summary = (
            f"in doubt since {iso(deadline)}: the lease of {who} expired mid-send "
            f"({_ago(now - marker.deadline)}); the provider may have the message, and "
            "its word (a status webhook) or router.in_doubt_window_s settles it"
        )


async def _index(settings: Settings, story: Story, client: aioredis.Redis, prefix: str) -> None:
    """Where an Instagram mid is known (its marker, its history), whether the provider index
    maps it back to this message."""
    mids: list[str] = []
    for marker in story.markers:
        if marker.channel == "instagram" and marker.provider_message_id:
            mids.append(marker.provider_message_id)
    mids += [
        e.provider_message_id
        for e in story.history
        if e.channel == "instagram" and e.provider_message_id
    ]
    mids = list(dict.fromkeys(mids))
    if not mids:
        return
    index = ProviderIndex(
        client, key=lambda k: prefix + k, ttl_s=settings.delivery.provider_index_ttl_s
    )
    known = await index.lookup("instagram", mids)
    for mid in mids:
        ref = known.get(mid)
        story.provider_index.append(IndexEntry("instagram", mid, ref.message_id if ref else None))


def _senders(story: Story) -> dict[str, str]:
    """The message's account per channel, as its outbox event names it (none: the default)."""
    for event in story.outbox:
        named = event.get("account")
        if isinstance(named, str):
            return dict.fromkeys(CHANNELS, named)
        if isinstance(named, dict):
            return {str(c): str(k) for c, k in named.items() if isinstance(k, str)}
    return {}


async def _from_workers(story: Story, channels: Sequence[str], workers: Sequence[str]) -> None:
    """The router's state of the channels not past it yet, at each worker."""
    waiting = [
        c
        for c in channels
        if not any(e.channel == c and e.status in PAST_ROUTER for e in story.history)
    ]
    if not waiting or not workers or not story.row:
        return
    timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        readings = await asyncio.gather(*(router_accounts(http, url) for url in workers))
    senders = _senders(story)
    for url, reading in zip(workers, readings, strict=True):
        if reading is None:
            story.workers_silent.append(url)
            continue
        for channel in waiting:
            state = reading.get(sender_ref(channel, senders.get(channel)))
            if isinstance(state, dict):
                held = state.get("held")
                story.router.append(
                    RouterChannel(
                        channel=channel,
                        worker=url,
                        state=str(state.get("state")),
                        reason=None if state.get("reason") is None else str(state["reason"]),
                        since=None if state.get("since") is None else str(state["since"]),
                        held=held if isinstance(held, int) else None,
                    )
                )


async def _from_dlq(settings: Settings, story: Story, limit: int) -> None:
    """The DLQ search, once PostgreSQL said which conversation and when (without either, the
    partition and the starting point are unknown: not searched, and said so)."""
    conversation_id, created_at = _conversation(story)
    if conversation_id is None or created_at is None:
        story.dlq = DlqSearch(
            topic=settings.topics.dlq,
            limit=limit,
            note="not searched: no messages row nor outbox event tells its conversation",
        )
        return
    story.dlq = await find_dead_letters(
        settings,
        message_id=story.message_id,
        conversation_id=conversation_id,
        created_at=created_at,
        limit=limit,
    )


def _conversation(story: Story) -> tuple[int | None, datetime | None]:
    if story.row is not None:
        return int(story.row["conversation_id"]), datetime.fromisoformat(story.row["created_at"])
    for event in story.outbox:
        aggregate_id = event["aggregate_id"]
        if (
            event["aggregate_type"] == "conversation"
            and aggregate_id.isascii()
            and aggregate_id.isdigit()
        ):
            return int(aggregate_id), datetime.fromisoformat(event["created_at"])
    return None, None


def iso(moment: datetime | None) -> str | None:
    """A time as the story shows it: UTC, to the millisecond, `Z`."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ago(seconds: float) -> str:
    return f"{timedelta(seconds=round(seconds))} ago"
