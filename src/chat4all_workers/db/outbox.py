"""The SQL of the outbox poller: claim events in per-aggregate order, then mark how they ended.

Several pollers may run at once. Row locks alone (`FOR UPDATE SKIP LOCKED`) would let two pollers
take two events of one aggregate and publish them out of order, so a claim first takes a
transaction-scoped advisory lock per aggregate (`pg_try_advisory_xact_lock`): whoever holds it owns
every unpublished event of that aggregate until it commits. Only then are the aggregate's rows read
and row-locked, in `seq` order, and only the due prefix is taken: an event waiting for a retry
holds back everything after it. Candidate aggregates are tried a few at a time, just enough to
fill a batch, so parallel pollers spread over different aggregates instead of queueing for the
same ones.

Every function here runs inside the caller's transaction; the locks end with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from chat4all_workers.frozen import frozen

# First key of the two-int advisory lock: a namespace so the outbox never collides with the
# migration lock or with an application's own advisory locks.
_LOCK_NAMESPACE = 0x4F425831  # "OBX1"
# How many candidate rows to read per batch slot: room to skip aggregates other pollers hold.
_WINDOW_FACTOR = 4

# Due events not queued behind an earlier event of their aggregate that waits for a retry.
_DUE = """
FROM outbox_events o
WHERE NOT o.published
  AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
  AND NOT EXISTS (
      SELECT 1 FROM outbox_events w
      WHERE NOT w.published AND w.next_attempt_at IS NOT NULL AND w.next_attempt_at > now()
        AND w.aggregate_type = o.aggregate_type AND w.aggregate_id = o.aggregate_id
        AND w.seq < o.seq)
"""

_CANDIDATES = f"SELECT o.aggregate_type, o.aggregate_id {_DUE} ORDER BY o.seq LIMIT $1"

_TRY_LOCK = """
SELECT a.n
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS a(t, i, n)
WHERE pg_try_advisory_xact_lock($1::int4, hashtext(a.t || chr(31) || a.i))
ORDER BY a.n
"""

# The advisory locks make these rows ours; SKIP LOCKED only guards against a foreign row lock.
_ROWS_OF = """
SELECT id, seq, aggregate_type, aggregate_id, event_type, topic, payload::text AS payload,
       attempts, last_error, (next_attempt_at IS NULL OR next_attempt_at <= now()) AS due
FROM outbox_events
WHERE NOT published
  AND (aggregate_type, aggregate_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY seq
LIMIT $3
FOR UPDATE SKIP LOCKED
"""


@frozen(slots=True)
class OutboxEvent:
    id: uuid.UUID
    seq: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    topic: str | None
    payload: str  # the jsonb as text
    attempts: int
    last_error: str | None

    @property
    def aggregate(self) -> tuple[str, str]:
        return (self.aggregate_type, self.aggregate_id)


@frozen(slots=True)
class Failure:
    event_id: uuid.UUID
    error: str
    retry_in_s: float


async def claim(conn: asyncpg.Connection, *, limit: int) -> list[OutboxEvent]:
    """Up to `limit` due events, in `seq` order, each the earliest unpublished of its aggregate
    or following one that is also claimed."""
    candidates = await conn.fetch(_CANDIDATES, limit * _WINDOW_FACTOR)
    counts: dict[tuple[str, str], int] = {}
    for row in candidates:
        key = (row["aggregate_type"], row["aggregate_id"])
        counts[key] = counts.get(key, 0) + 1
    locked = await _lock_enough(conn, list(counts.items()), limit)
    if not locked:
        return []
    rows = await conn.fetch(_ROWS_OF, [t for t, _ in locked], [i for _, i in locked], limit)
    return _due_prefixes(rows)


async def _lock_enough(
    conn: asyncpg.Connection, counts: list[tuple[tuple[str, str], int]], limit: int
) -> list[tuple[str, str]]:
    """Advisory-lock candidate aggregates in order until they hold about `limit` events."""
    locked: list[tuple[str, str]] = []
    held = 0
    start = 0
    while start < len(counts) and held < limit:
        end, want = start, 0
        while end < len(counts) and held + want < limit:
            want += counts[end][1]
            end += 1
        chunk = counts[start:end]
        got = await conn.fetch(
            _TRY_LOCK, _LOCK_NAMESPACE, [a[0] for a, _ in chunk], [a[1] for a, _ in chunk]
        )
        for row in got:
            aggregate, count = chunk[row["n"] - 1]
            locked.append(aggregate)
            held += count
        start = end
    return locked


def _due_prefixes(rows: Sequence[asyncpg.Record]) -> list[OutboxEvent]:
    blocked: set[tuple[str, str]] = set()
    events: list[OutboxEvent] = []
    for row in rows:
        aggregate = (row["aggregate_type"], row["aggregate_id"])
        if aggregate in blocked:
            continue
        if not row["due"]:
            blocked.add(aggregate)
            continue
        events.append(
            OutboxEvent(
                id=row["id"],
                seq=row["seq"],
                aggregate_type=row["aggregate_type"],
                aggregate_id=row["aggregate_id"],
                event_type=row["event_type"],
                topic=row["topic"],
                payload=row["payload"],
                attempts=row["attempts"],
                last_error=row["last_error"],
            )
        )
    return events


async def mark_published(conn: asyncpg.Connection, event_ids: Sequence[uuid.UUID]) -> None:
    """Published (or dead-lettered: `last_error` stays as the reason)."""
    if event_ids:
        await conn.execute(
            "UPDATE outbox_events SET published = true, published_at = now() "
            "WHERE id = ANY($1::uuid[])",
            list(event_ids),
        )


async def mark_failed(conn: asyncpg.Connection, failures: Sequence[Failure]) -> None:
    if failures:
        await conn.execute(
            """UPDATE outbox_events o
               SET attempts = o.attempts + 1, last_error = f.error,
                   next_attempt_at = clock_timestamp() + make_interval(secs => f.delay)
               FROM unnest($1::uuid[], $2::text[], $3::float8[]) AS f(id, error, delay)
               WHERE o.id = f.id""",
            [f.event_id for f in failures],
            [f.error for f in failures],
            [f.retry_in_s for f in failures],
        )


async def has_due(conn: asyncpg.Connection | asyncpg.Pool) -> bool:
    """Whether any event could be published now, whoever holds it."""
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 {_DUE})"))


async def count_pending(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox_events WHERE NOT published"))
