"""The outbox poller's SQL against the real PostgreSQL, in a schema of the test's own
(db/outbox.py): claims in per-aggregate order, pollers kept apart, and how events end.

Every claim runs inside a transaction, as the poller's do; the claim's locks end with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
import orjson
import pytest

from chat4all_workers.db import outbox
from tests.db.conftest import PgSchema

pytestmark = pytest.mark.stack

LATER_S = 3600.0


async def add_events(
    conn: asyncpg.Connection,
    aggregates: Sequence[str],
    *,
    retry_in_s: float | None = None,
    attempts: int = 0,
    last_error: str | None = None,
) -> list[uuid.UUID]:
    """One event per entry of `aggregates` (aggregate ids of type `conversation`), in that `seq`
    order; payload {"aggregate": id, "n": position}. `retry_in_s` makes them wait for a retry
    (negative: a retry already due)."""
    ids = [uuid.uuid4() for _ in aggregates]
    for n, (event_id, aggregate) in enumerate(zip(ids, aggregates, strict=True)):
        await conn.execute(
            """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, topic,
                   payload, attempts, next_attempt_at, last_error)
               VALUES ($1, 'conversation', $2, 'message.created', $3, $4::jsonb, $5,
                       now() + make_interval(secs => $6), $7)""",
            event_id,
            aggregate,
            "own-topic" if aggregate.endswith("-t") else None,
            orjson.dumps({"aggregate": aggregate, "n": n}).decode(),
            attempts,
            retry_in_s,
            last_error,
        )
    return ids


async def claim_now(conn: asyncpg.Connection, *, limit: int = 100) -> list[outbox.OutboxEvent]:
    """A claim in a transaction of its own, committed at once (nothing marked)."""
    async with conn.transaction():
        return await outbox.claim(conn, limit=limit)


def aggregates_of(events: Sequence[outbox.OutboxEvent]) -> list[str]:
    return [e.aggregate_id for e in events]


# -- claim --------------------------------------------------------------------------------------


async def test_outbox_claim_reads_every_field_of_an_event(conn: asyncpg.Connection) -> None:
    (event_id,) = await add_events(conn, ["c1-t"])

    (event,) = await claim_now(conn)

    assert event == outbox.OutboxEvent(
        id=event_id,
        seq=event.seq,
        aggregate_type="conversation",
        aggregate_id="c1-t",
        event_type="message.created",
        topic="own-topic",
        payload=event.payload,
        attempts=0,
        last_error=None,
    )
    assert orjson.loads(event.payload) == {"aggregate": "c1-t", "n": 0}
    assert event.aggregate == ("conversation", "c1-t")


async def test_outbox_claim_of_an_empty_outbox_is_empty(conn: asyncpg.Connection) -> None:
    assert await claim_now(conn) == []


async def test_outbox_claim_returns_due_events_in_seq_order(conn: asyncpg.Connection) -> None:
    ids = await add_events(conn, ["a", "b", "a", "c", "b", "a"])

    events = await claim_now(conn)

    assert [e.id for e in events] == ids
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def test_outbox_claim_takes_at_most_limit_events_oldest_first(
    conn: asyncpg.Connection,
) -> None:
    ids = await add_events(conn, ["a", "a", "a", "b", "b", "c"])

    events = await claim_now(conn, limit=4)

    assert [e.id for e in events] == ids[:4]


async def test_outbox_claim_skips_published_events(conn: asyncpg.Connection) -> None:
    ids = await add_events(conn, ["a", "a", "b"])
    await outbox.mark_published(conn, ids[:1])

    events = await claim_now(conn)

    assert [e.id for e in events] == ids[1:]


async def test_outbox_claim_an_event_waiting_for_retry_holds_back_its_aggregate_only(
    conn: asyncpg.Connection,
) -> None:
    await add_events(conn, ["a"], retry_in_s=LATER_S, attempts=1, last_error="boom")
    later = await add_events(conn, ["a", "b", "a", "b"])

    events = await claim_now(conn)

    assert [e.id for e in events] == [later[1], later[3]]
    assert aggregates_of(events) == ["b", "b"]


async def test_outbox_claim_an_aggregate_before_its_waiting_event_goes_on(
    conn: asyncpg.Connection,
) -> None:
    (first,) = await add_events(conn, ["a"])
    await add_events(conn, ["a"], retry_in_s=LATER_S, attempts=1)
    await add_events(conn, ["a"])

    events = await claim_now(conn)

    assert [e.id for e in events] == [first]


async def test_outbox_claim_takes_a_retry_once_it_is_due(conn: asyncpg.Connection) -> None:
    (retry,) = await add_events(conn, ["a"], retry_in_s=-1.0, attempts=2, last_error="timeout")
    (after,) = await add_events(conn, ["a"])

    events = await claim_now(conn)

    assert [e.id for e in events] == [retry, after]
    assert (events[0].attempts, events[0].last_error) == (2, "timeout")


async def test_outbox_claim_leaves_an_aggregate_another_poller_holds(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    await add_events(conn, ["a", "b", "a", "c"])

    async with other.transaction():
        held = await outbox.claim(other, limit=1)
        theirs = await claim_now(conn)

    assert aggregates_of(held) == ["a"]
    assert sorted(set(aggregates_of(theirs))) == ["b", "c"]


async def test_outbox_claim_two_pollers_never_share_an_event(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    ids = await add_events(conn, [f"agg-{n % 7}" for n in range(40)])

    async with other.transaction(), conn.transaction():
        first = await outbox.claim(conn, limit=10)
        second = await outbox.claim(other, limit=10)

    assert first
    assert second
    assert not {e.id for e in first} & {e.id for e in second}
    assert not set(aggregates_of(first)) & set(aggregates_of(second))
    assert {e.id for e in first + second} <= set(ids)


async def test_outbox_claim_locks_end_with_the_transaction(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    ids = await add_events(conn, ["a", "a"])
    async with other.transaction():
        assert len(await outbox.claim(other, limit=10)) == 2
        while_held = await claim_now(conn)

    after_commit = await claim_now(conn)

    assert while_held == []
    assert [e.id for e in after_commit] == ids


async def test_outbox_claim_fills_the_batch_past_aggregates_others_hold(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    await add_events(conn, ["held", "held", "held", "free-1", "free-2", "free-3"])

    async with other.transaction():
        assert aggregates_of(await outbox.claim(other, limit=1)) == ["held"]  # and its lock
        events = await claim_now(conn, limit=2)

    assert aggregates_of(events) == ["free-1", "free-2"]


# -- marking ------------------------------------------------------------------------------------


async def test_outbox_mark_published_removes_the_events_from_claims_and_pending(
    conn: asyncpg.Connection,
) -> None:
    ids = await add_events(conn, ["a", "b", "c"])

    await outbox.mark_published(conn, ids[:2])

    rows = await conn.fetch(
        "SELECT id, published, published_at IS NOT NULL AS stamped FROM outbox_events"
    )
    assert {r["id"]: (r["published"], r["stamped"]) for r in rows} == {
        ids[0]: (True, True),
        ids[1]: (True, True),
        ids[2]: (False, False),
    }
    assert await outbox.count_pending(conn) == 1
    assert [e.id for e in await claim_now(conn)] == ids[2:]


async def test_outbox_mark_published_keeps_a_dead_letters_last_error(
    conn: asyncpg.Connection,
) -> None:
    (event_id,) = await add_events(conn, ["a"], retry_in_s=-1.0, attempts=5, last_error="gone")

    await outbox.mark_published(conn, [event_id])

    row = await conn.fetchrow("SELECT published, last_error FROM outbox_events")
    assert row is not None
    assert (row["published"], row["last_error"]) == (True, "gone")


async def test_outbox_mark_published_of_nothing_changes_nothing(conn: asyncpg.Connection) -> None:
    await add_events(conn, ["a"])

    await outbox.mark_published(conn, [])

    assert await outbox.count_pending(conn) == 1


async def test_outbox_mark_failed_counts_the_attempt_and_schedules_the_retry(
    conn: asyncpg.Connection,
) -> None:
    first, second = await add_events(conn, ["a", "b"], attempts=1)

    await outbox.mark_failed(
        conn,
        [outbox.Failure(first, "KafkaTimeoutError: x", 30.0), outbox.Failure(second, "y", 0.0)],
    )

    rows = await conn.fetch(
        """SELECT id, attempts, last_error,
                  extract(epoch FROM next_attempt_at - clock_timestamp()) AS due_in_s
           FROM outbox_events"""
    )
    got = {r["id"]: (r["attempts"], r["last_error"], float(r["due_in_s"])) for r in rows}
    assert got[first][:2] == (2, "KafkaTimeoutError: x")
    assert 25.0 < got[first][2] <= 30.0
    assert got[second][:2] == (2, "y")
    assert got[second][2] <= 0.0


async def test_outbox_mark_failed_holds_back_the_aggregate_until_the_retry(
    conn: asyncpg.Connection,
) -> None:
    failing, behind = await add_events(conn, ["a", "a"])
    (other,) = await add_events(conn, ["b"])

    await outbox.mark_failed(conn, [outbox.Failure(failing, "boom", LATER_S)])

    assert [e.id for e in await claim_now(conn)] == [other]
    assert await outbox.count_pending(conn) == 3
    assert behind not in {e.id for e in await claim_now(conn)}


async def test_outbox_mark_failed_of_nothing_changes_nothing(conn: asyncpg.Connection) -> None:
    (event_id,) = await add_events(conn, ["a"])

    await outbox.mark_failed(conn, [])

    assert [e.id for e in await claim_now(conn)] == [event_id]


# -- has_due and count_pending ------------------------------------------------------------------


async def test_outbox_has_due_is_false_for_an_empty_outbox(conn: asyncpg.Connection) -> None:
    assert not await outbox.has_due(conn)


async def test_outbox_has_due_is_true_with_a_due_event(conn: asyncpg.Connection) -> None:
    await add_events(conn, ["a"])

    assert await outbox.has_due(conn)


async def test_outbox_has_due_is_false_when_every_event_waits(conn: asyncpg.Connection) -> None:
    await add_events(conn, ["a"], retry_in_s=LATER_S, attempts=1)
    await add_events(conn, ["a"])  # behind the waiting one
    ids = await add_events(conn, ["b"])
    await outbox.mark_published(conn, ids)

    assert not await outbox.has_due(conn)


async def test_outbox_has_due_counts_events_another_poller_holds(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    await add_events(conn, ["a"])

    async with other.transaction():
        assert len(await outbox.claim(other, limit=10)) == 1
        due = await outbox.has_due(conn)

    assert due


async def test_outbox_count_pending_counts_every_unpublished_event(
    conn: asyncpg.Connection,
) -> None:
    await add_events(conn, ["a", "b"])
    await add_events(conn, ["c"], retry_in_s=LATER_S, attempts=1)
    published = await add_events(conn, ["d", "e"])
    await outbox.mark_published(conn, published)

    assert await outbox.count_pending(conn) == 3
