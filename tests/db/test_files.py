"""The files pipeline's SQL against the real PostgreSQL, in a schema of the test's own
(db/files.py): forward-only status moves, chunk rows, merge and GC locks, stale uploads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from chat4all_workers.db import files
from tests.db.conftest import PgSchema

pytestmark = pytest.mark.stack

RETENTION_S = 3600.0
MERGING_STUCK_S = 600.0
COMPLETED_AT = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


async def add_file(
    conn: asyncpg.Connection,
    status: str = "PENDING",
    *,
    age_s: float = 0.0,
    error: str | None = None,
    file_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A `files` row last updated `age_s` seconds ago."""
    file_id = file_id or uuid.uuid4()
    await conn.execute(
        """INSERT INTO files (id, conversation_id, uploader_id, filename, mime_type,
               checksum_sha256, status, total_chunks, error, updated_at)
           VALUES ($1, 42, 7, 'report.pdf', 'application/pdf', 'abc123', $2, 3, $3,
                   now() - make_interval(secs => $4))""",
        file_id,
        status,
        error,
        age_s,
    )
    return file_id


async def add_chunk(
    conn: asyncpg.Connection, file_id: uuid.UUID, number: int, *, age_s: float = 0.0
) -> None:
    await conn.execute(
        """INSERT INTO file_chunks (id, file_id, chunk_number, chunk_size, storage_key,
               checksum_sha256, uploaded_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() - make_interval(secs => $7))""",
        uuid.uuid4(),
        file_id,
        number,
        1000 + number,
        f"chunks/{file_id}/{number}",
        f"sum{number}",
        age_s,
    )


async def status_of(conn: asyncpg.Connection, file_id: uuid.UUID) -> tuple[str, str | None]:
    row = await conn.fetchrow("SELECT status, error FROM files WHERE id = $1", file_id)
    assert row is not None
    return row["status"], row["error"]


async def stale(conn: asyncpg.Connection, *, limit: int = 100) -> list[files.StaleUpload]:
    return await files.stale_uploads(
        conn, retention_s=RETENTION_S, merging_stuck_s=MERGING_STUCK_S, after=None, limit=limit
    )


async def fail_stale(
    conn: asyncpg.Connection, *, after: uuid.UUID | None = None, limit: int = 100
) -> tuple[list[files.StaleUpload], uuid.UUID | None]:
    return await files.fail_stale_uploads(
        conn, retention_s=RETENTION_S, merging_stuck_s=MERGING_STUCK_S, after=after, limit=limit
    )


# -- reading a file -----------------------------------------------------------------------------


async def test_get_file_reads_every_column(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn, "UPLOADING")

    row = await files.get_file(conn, file_id)

    assert row == files.FileRow(
        id=file_id,
        conversation_id=42,
        uploader_id=7,
        filename="report.pdf",
        file_size=None,
        mime_type="application/pdf",
        checksum_sha256="abc123",
        storage_key=None,
        status="UPLOADING",
        total_chunks=3,
        error=None,
        completed_at=None,
    )


async def test_get_file_of_an_unknown_id_is_none(conn: asyncpg.Connection) -> None:
    await add_file(conn)

    assert await files.get_file(conn, uuid.uuid4()) is None


# -- status moves -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["PENDING", "UPLOADING", "MERGING"])
async def test_start_merging_moves_an_unfinished_upload_to_merging(
    conn: asyncpg.Connection, status: str
) -> None:
    file_id = await add_file(conn, status)

    row = await files.start_merging(conn, file_id)

    assert row is not None
    assert (row.id, row.status) == (file_id, "MERGING")
    assert await status_of(conn, file_id) == ("MERGING", None)


async def test_start_merging_again_restarts_the_stuck_merge_clock(
    conn: asyncpg.Connection,
) -> None:
    file_id = await add_file(conn, "MERGING", age_s=MERGING_STUCK_S * 2)
    assert await files.count_stuck_merging(conn, minutes=1) == 1

    await files.start_merging(conn, file_id)

    assert await files.count_stuck_merging(conn, minutes=1) == 0


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED"])
async def test_start_merging_leaves_a_finished_upload_alone(
    conn: asyncpg.Connection, status: str
) -> None:
    file_id = await add_file(conn, status, error="earlier" if status == "FAILED" else None)

    row = await files.start_merging(conn, file_id)

    assert row is None
    assert (await status_of(conn, file_id))[0] == status


async def test_start_merging_an_unknown_file_is_none(conn: asyncpg.Connection) -> None:
    assert await files.start_merging(conn, uuid.uuid4()) is None


async def test_mark_completed_finishes_a_merge(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn, "MERGING", error="a retry's leftover")

    done = await files.mark_completed(
        conn, file_id, file_size=123_456, storage_key="files/x.pdf", completed_at=COMPLETED_AT
    )

    row = await files.get_file(conn, file_id)
    assert done
    assert row is not None
    assert (row.status, row.file_size, row.storage_key, row.completed_at, row.error) == (
        "COMPLETED",
        123_456,
        "files/x.pdf",
        COMPLETED_AT,
        None,
    )


@pytest.mark.parametrize("status", ["PENDING", "UPLOADING", "COMPLETED", "FAILED"])
async def test_mark_completed_needs_a_file_in_merging(
    conn: asyncpg.Connection, status: str
) -> None:
    file_id = await add_file(conn, status)

    done = await files.mark_completed(
        conn, file_id, file_size=1, storage_key="files/x", completed_at=COMPLETED_AT
    )

    row = await files.get_file(conn, file_id)
    assert not done
    assert row is not None
    assert (row.status, row.storage_key, row.completed_at) == (status, None, None)


@pytest.mark.parametrize("status", ["PENDING", "UPLOADING", "MERGING"])
async def test_mark_failed_fails_an_unfinished_upload_with_its_error(
    conn: asyncpg.Connection, status: str
) -> None:
    file_id = await add_file(conn, status)

    failed = await files.mark_failed(conn, file_id, "checksum mismatch")

    assert failed
    assert await status_of(conn, file_id) == ("FAILED", "checksum mismatch")


async def test_mark_failed_never_undoes_a_completed_upload(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn, "COMPLETED")

    failed = await files.mark_failed(conn, file_id, "too late")

    assert not failed
    assert await status_of(conn, file_id) == ("COMPLETED", None)


async def test_mark_failed_twice_keeps_the_first_error(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn, "MERGING")
    await files.mark_failed(conn, file_id, "first")

    again = await files.mark_failed(conn, file_id, "second")

    assert not again
    assert await status_of(conn, file_id) == ("FAILED", "first")


async def test_mark_failed_of_an_unknown_file_is_false(conn: asyncpg.Connection) -> None:
    assert not await files.mark_failed(conn, uuid.uuid4(), "gone")


# -- chunks -------------------------------------------------------------------------------------


async def test_chunk_rows_lists_the_files_chunks_by_number(conn: asyncpg.Connection) -> None:
    file_id, other = await add_file(conn), await add_file(conn)
    for number in (3, 1, 2):
        await add_chunk(conn, file_id, number)
    await add_chunk(conn, other, 1)

    chunks = await files.chunk_rows(conn, file_id)

    assert chunks == [
        files.ChunkRow(n, 1000 + n, f"chunks/{file_id}/{n}", f"sum{n}") for n in (1, 2, 3)
    ]


async def test_chunk_rows_of_a_file_without_chunks_is_empty(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn)

    assert await files.chunk_rows(conn, file_id) == []


async def test_delete_chunk_rows_deletes_the_files_chunks_only(conn: asyncpg.Connection) -> None:
    file_id, other = await add_file(conn), await add_file(conn)
    for number in (1, 2, 3):
        await add_chunk(conn, file_id, number)
    await add_chunk(conn, other, 1)

    deleted = await files.delete_chunk_rows(conn, file_id)

    assert deleted == 3
    assert await files.chunk_rows(conn, file_id) == []
    assert len(await files.chunk_rows(conn, other)) == 1


async def test_delete_chunk_rows_without_chunks_is_zero(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn)

    assert await files.delete_chunk_rows(conn, file_id) == 0


# -- locks --------------------------------------------------------------------------------------


async def test_try_lock_merge_refuses_a_second_session(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    file_id = uuid.uuid4()
    assert await files.try_lock_merge(conn, file_id)

    taken_while_held = await files.try_lock_merge(other, file_id)
    await files.unlock_merge(conn, file_id)
    taken_after_unlock = await files.try_lock_merge(other, file_id)

    assert not taken_while_held
    assert taken_after_unlock


async def test_try_lock_merge_locks_one_file_only(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    assert await files.try_lock_merge(conn, uuid.uuid4())

    assert await files.try_lock_merge(other, uuid.uuid4())


async def test_try_lock_merge_ends_with_the_session(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    holder = await pg_schema.connect()
    file_id = uuid.uuid4()
    assert await files.try_lock_merge(holder, file_id)

    await holder.close()

    assert await files.try_lock_merge(conn, file_id)


async def test_try_lock_merge_outlives_a_transaction(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    file_id = uuid.uuid4()
    async with conn.transaction():
        assert await files.try_lock_merge(conn, file_id)

    assert not await files.try_lock_merge(other, file_id)


async def test_try_lock_gc_lets_one_session_run_a_pass(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    assert await files.try_lock_gc(conn)

    taken_while_held = await files.try_lock_gc(other)
    await files.unlock_gc(conn)
    taken_after_unlock = await files.try_lock_gc(other)
    await files.unlock_gc(other)

    assert not taken_while_held
    assert taken_after_unlock


# -- stale uploads ------------------------------------------------------------------------------


async def test_stale_uploads_lists_quiet_uploads_and_stuck_merges(
    conn: asyncpg.Connection,
) -> None:
    old_pending = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)
    old_uploading = await add_file(conn, "UPLOADING", age_s=RETENTION_S + 60)
    stuck = await add_file(conn, "MERGING", age_s=MERGING_STUCK_S + 60)
    await add_file(conn, "PENDING", age_s=RETENTION_S - 60)  # still in its window
    await add_file(conn, "MERGING", age_s=MERGING_STUCK_S - 60)  # a merge under way
    await add_file(conn, "COMPLETED", age_s=RETENTION_S * 10)
    await add_file(conn, "FAILED", age_s=RETENTION_S * 10, error="x")

    found = await stale(conn)

    assert {(s.id, s.status) for s in found} == {
        (old_pending, "PENDING"),
        (old_uploading, "UPLOADING"),
        (stuck, "MERGING"),
    }


async def test_stale_uploads_a_recent_chunk_keeps_an_old_upload_alive(
    conn: asyncpg.Connection,
) -> None:
    alive = await add_file(conn, "UPLOADING", age_s=RETENTION_S + 60)
    await add_chunk(conn, alive, 1, age_s=RETENTION_S + 30)
    await add_chunk(conn, alive, 2, age_s=10)
    quiet = await add_file(conn, "UPLOADING", age_s=RETENTION_S + 60)
    await add_chunk(conn, quiet, 1, age_s=RETENTION_S + 30)

    found = await stale(conn)

    assert [s.id for s in found] == [quiet]


async def test_stale_uploads_pages_by_id(conn: asyncpg.Connection) -> None:
    ids = sorted([await add_file(conn, age_s=RETENTION_S + 60) for _ in range(5)])

    first = await files.stale_uploads(
        conn, retention_s=RETENTION_S, merging_stuck_s=MERGING_STUCK_S, after=None, limit=2
    )
    second = await files.stale_uploads(
        conn, retention_s=RETENTION_S, merging_stuck_s=MERGING_STUCK_S, after=first[-1].id, limit=2
    )
    last = await files.stale_uploads(
        conn, retention_s=RETENTION_S, merging_stuck_s=MERGING_STUCK_S, after=ids[-1], limit=2
    )

    assert [s.id for s in first] == ids[:2]
    assert [s.id for s in second] == ids[2:4]
    assert last == []


async def test_stale_uploads_only_reads(conn: asyncpg.Connection) -> None:
    file_id = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)

    await stale(conn)

    assert await status_of(conn, file_id) == ("PENDING", None)


async def test_fail_stale_uploads_fails_each_saying_what_it_was(conn: asyncpg.Connection) -> None:
    pending = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)
    merging = await add_file(conn, "MERGING", age_s=MERGING_STUCK_S + 60)
    fresh = await add_file(conn, "PENDING")

    claimed, last_id = await fail_stale(conn)

    assert {(c.id, c.status) for c in claimed} == {(pending, "PENDING"), (merging, "MERGING")}
    assert last_id == max(pending, merging)
    assert await status_of(conn, pending) == (
        "FAILED",
        "abandoned upload (was PENDING, no activity within the limit)",
    )
    assert await status_of(conn, merging) == (
        "FAILED",
        "abandoned upload (was MERGING, no activity within the limit)",
    )
    assert await status_of(conn, fresh) == ("PENDING", None)


async def test_fail_stale_uploads_with_nothing_stale_returns_no_page(
    conn: asyncpg.Connection,
) -> None:
    await add_file(conn, "PENDING")

    assert await fail_stale(conn) == ([], None)


async def test_fail_stale_uploads_spares_a_merge_that_holds_its_lock(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    merger = await pg_schema.connect()
    running = await add_file(conn, "MERGING", age_s=MERGING_STUCK_S + 60)
    assert await files.try_lock_merge(merger, running)

    claimed, last_id = await fail_stale(conn)

    assert claimed == []
    assert last_id == running  # the page still moves past it
    assert await status_of(conn, running) == ("MERGING", None)


async def test_fail_stale_uploads_skips_rows_another_transaction_locked(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    locked = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)
    free = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)

    async with other.transaction():
        await other.execute("SELECT 1 FROM files WHERE id = $1 FOR UPDATE", locked)
        claimed, _ = await fail_stale(conn)

    assert [c.id for c in claimed] == [free]
    assert await status_of(conn, locked) == ("PENDING", None)


async def test_fail_stale_uploads_pages_by_id(conn: asyncpg.Connection) -> None:
    ids = sorted([await add_file(conn, age_s=RETENTION_S + 60) for _ in range(3)])

    first, first_last = await fail_stale(conn, limit=2)
    second, second_last = await fail_stale(conn, after=first_last, limit=2)

    assert ([c.id for c in first], first_last) == (ids[:2], ids[1])
    assert ([c.id for c in second], second_last) == (ids[2:], ids[2])


async def test_abandoned_with_chunks_lists_gc_failures_whose_chunks_remain(
    conn: asyncpg.Connection,
) -> None:
    leftover = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)
    await add_chunk(conn, leftover, 1, age_s=RETENTION_S + 60)
    cleaned = await add_file(conn, "PENDING", age_s=RETENTION_S + 60)
    await fail_stale(conn)
    other_failure = await add_file(conn, "FAILED", error="checksum mismatch")
    await add_chunk(conn, other_failure, 1)

    found = await files.abandoned_with_chunks(conn, after=None, limit=10)

    assert found == [leftover]
    assert (await status_of(conn, cleaned))[0] == "FAILED"


async def test_abandoned_with_chunks_pages_by_id(conn: asyncpg.Connection) -> None:
    ids = sorted(
        [await add_file(conn, "FAILED", error=f"{files.ABANDONED_PREFIX} (x)") for _ in range(3)]
    )
    for file_id in ids:
        await add_chunk(conn, file_id, 1)

    first = await files.abandoned_with_chunks(conn, after=None, limit=2)
    rest = await files.abandoned_with_chunks(conn, after=first[-1], limit=2)

    assert (first, rest) == (ids[:2], ids[2:])


async def test_count_stuck_merging_counts_merges_older_than_the_limit(
    conn: asyncpg.Connection,
) -> None:
    for age_s in (30, 90, 150, 400):
        await add_file(conn, "MERGING", age_s=age_s)
    await add_file(conn, "PENDING", age_s=400)

    counts = [await files.count_stuck_merging(conn, minutes=m) for m in (0.25, 1, 2, 5, 10)]

    assert counts == [4, 3, 2, 1, 0]
