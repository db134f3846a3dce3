"""The SQL of the files pipeline: uploads (`files`), their chunks (`file_chunks`) and the locks
that keep a merge and the garbage collector from working on the same upload at once.

Status moves only forward: PENDING/UPLOADING -> MERGING -> COMPLETED or FAILED. Every transition is
one conditional UPDATE, so two workers racing on one row cannot both win.

A merge holds a session advisory lock on (MERGE_LOCK_CLASS, hashtext(file id)) for its whole
duration; the GC takes the same lock (transaction-scoped) before failing a file stuck in MERGING,
so it never fails a merge that is still running, however long it takes.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from chat4all_workers.frozen import frozen

# Advisory lock keys (two-int form: class, object). The classes keep these apart from any other
# advisory lock of the application (migrations use the one-bigint form).
MERGE_LOCK_CLASS = 0x4D52  # "MR": one lock per upload being merged
GC_LOCK_CLASS = 0x4743  # "GC": one lock for the whole GC pass, cluster-wide
GC_LOCK_ID = 1

ABANDONED_PREFIX = "abandoned upload"


@frozen
class FileRow:
    id: uuid.UUID
    conversation_id: int | None
    uploader_id: int | None
    filename: str
    file_size: int | None
    mime_type: str | None
    checksum_sha256: str | None
    storage_key: str | None
    status: str
    total_chunks: int | None
    error: str | None
    completed_at: datetime | None

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> FileRow:
        return cls(
            id=r["id"],
            conversation_id=r["conversation_id"],
            uploader_id=r["uploader_id"],
            filename=r["filename"],
            file_size=r["file_size"],
            mime_type=r["mime_type"],
            checksum_sha256=r["checksum_sha256"],
            storage_key=r["storage_key"],
            status=r["status"],
            total_chunks=r["total_chunks"],
            error=r["error"],
            completed_at=r["completed_at"],
        )


@frozen
class ChunkRow:
    chunk_number: int
    chunk_size: int
    storage_key: str
    checksum_sha256: str | None


_FILE_COLUMNS = """id, conversation_id, uploader_id, filename, file_size, mime_type,
    checksum_sha256, storage_key, status, total_chunks, error, completed_at"""


async def try_lock_merge(conn: asyncpg.Connection, file_id: uuid.UUID) -> bool:
    """Session lock: held until `unlock_merge` (or until the connection closes)."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", MERGE_LOCK_CLASS, str(file_id)
        )
    )


async def unlock_merge(conn: asyncpg.Connection, file_id: uuid.UUID) -> None:
    await conn.execute(
        "SELECT pg_advisory_unlock($1, hashtext($2))", MERGE_LOCK_CLASS, str(file_id)
    )


async def get_file(conn: asyncpg.Pool | asyncpg.Connection, file_id: uuid.UUID) -> FileRow | None:
    row = await conn.fetchrow(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = $1", file_id)
    return None if row is None else FileRow.from_record(row)


async def start_merging(conn: asyncpg.Connection, file_id: uuid.UUID) -> FileRow | None:
    """PENDING/UPLOADING/MERGING -> MERGING (MERGING again after a crash); None if the file is
    already COMPLETED or FAILED. `updated_at` restarts the GC's stuck-merge clock."""
    row = await conn.fetchrow(
        f"""UPDATE files SET status = 'MERGING', updated_at = now()
            WHERE id = $1 AND status IN ('PENDING', 'UPLOADING', 'MERGING')
            RETURNING {_FILE_COLUMNS}""",
        file_id,
    )
    return None if row is None else FileRow.from_record(row)


async def chunk_rows(conn: asyncpg.Connection, file_id: uuid.UUID) -> list[ChunkRow]:
    rows = await conn.fetch(
        """SELECT chunk_number, chunk_size, storage_key, checksum_sha256 FROM file_chunks
           WHERE file_id = $1 ORDER BY chunk_number""",
        file_id,
    )
    return [
        ChunkRow(r["chunk_number"], r["chunk_size"], r["storage_key"], r["checksum_sha256"])
        for r in rows
    ]


async def mark_completed(
    conn: asyncpg.Connection,
    file_id: uuid.UUID,
    *,
    file_size: int,
    storage_key: str,
    completed_at: datetime,
) -> bool:
    result = await conn.execute(
        """UPDATE files SET status = 'COMPLETED', file_size = $2, storage_key = $3,
               completed_at = $4, error = NULL, updated_at = now()
           WHERE id = $1 AND status = 'MERGING'""",
        file_id,
        file_size,
        storage_key,
        completed_at,
    )
    return str(result).endswith(" 1")


async def mark_failed(conn: asyncpg.Connection, file_id: uuid.UUID, error: str) -> bool:
    result = await conn.execute(
        """UPDATE files SET status = 'FAILED', error = $2, updated_at = now()
           WHERE id = $1 AND status IN ('PENDING', 'UPLOADING', 'MERGING')""",
        file_id,
        error,
    )
    return str(result).endswith(" 1")


async def delete_chunk_rows(conn: asyncpg.Connection, file_id: uuid.UUID) -> int:
    result = await conn.execute("DELETE FROM file_chunks WHERE file_id = $1", file_id)
    return int(str(result).rsplit(" ", 1)[-1])


# -- garbage collection -----------------------------------------------------------------------


async def try_lock_gc(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", GC_LOCK_CLASS, GC_LOCK_ID)
    )


async def unlock_gc(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", GC_LOCK_CLASS, GC_LOCK_ID)


# An upload is stale when nothing happened to it (row or chunks) within its window: uploads in
# progress by the retention, merges by the stuck-merge timeout.
_STALE = """(
    (f.status IN ('PENDING', 'UPLOADING') AND f.updated_at < now() - make_interval(secs => $1)
     AND NOT EXISTS (SELECT 1 FROM file_chunks c WHERE c.file_id = f.id
                     AND c.uploaded_at >= now() - make_interval(secs => $1)))
    OR (f.status = 'MERGING' AND f.updated_at < now() - make_interval(secs => $2))
)"""


@frozen
class StaleUpload:
    id: uuid.UUID
    status: str


async def stale_uploads(
    conn: asyncpg.Connection,
    *,
    retention_s: float,
    merging_stuck_s: float,
    after: uuid.UUID | None,
    limit: int,
) -> list[StaleUpload]:
    """A page of stale uploads (keyset pagination by id), read only: for dry runs."""
    rows = await conn.fetch(
        f"""SELECT f.id, f.status FROM files f
            WHERE {_STALE} AND ($3::uuid IS NULL OR f.id > $3)
            ORDER BY f.id LIMIT $4""",
        retention_s,
        merging_stuck_s,
        after,
        limit,
    )
    return [StaleUpload(r["id"], r["status"]) for r in rows]


async def fail_stale_uploads(
    conn: asyncpg.Connection,
    *,
    retention_s: float,
    merging_stuck_s: float,
    after: uuid.UUID | None,
    limit: int,
) -> tuple[list[StaleUpload], uuid.UUID | None]:
    """Mark one page of stale uploads FAILED; returns those marked and the page's last id.

    Rows are claimed with SKIP LOCKED, and a stuck MERGING file is failed only if no merge holds
    its lock (a live merge of a huge file is left alone). A merge that starts concurrently either
    sees FAILED and gives up, or moved the row to MERGING first and the re-checked condition here
    no longer matches.
    """
    async with conn.transaction():
        rows = await conn.fetch(
            f"""SELECT f.id, f.status FROM files f
                WHERE {_STALE} AND ($3::uuid IS NULL OR f.id > $3)
                ORDER BY f.id LIMIT $4 FOR UPDATE SKIP LOCKED""",
            retention_s,
            merging_stuck_s,
            after,
            limit,
        )
        if not rows:
            return [], None
        last_id: uuid.UUID = rows[-1]["id"]
        claimed: list[StaleUpload] = []
        for r in rows:
            if r["status"] == "MERGING" and not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                MERGE_LOCK_CLASS,
                str(r["id"]),
            ):
                continue
            claimed.append(StaleUpload(r["id"], r["status"]))
        if claimed:
            await conn.execute(
                """UPDATE files SET status = 'FAILED', updated_at = now(),
                       error = $2 || ' (was ' || status || ', no activity within the limit)'
                   WHERE id = ANY($1::uuid[])""",
                [c.id for c in claimed],
                ABANDONED_PREFIX,
            )
    return claimed, last_id


async def abandoned_with_chunks(
    conn: asyncpg.Connection, *, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """Uploads the GC failed whose chunks are still recorded: a pass that crashed after marking
    them; the next pass finishes their cleanup."""
    rows = await conn.fetch(
        """SELECT f.id FROM files f
           WHERE f.status = 'FAILED' AND f.error LIKE $1 || '%'
             AND EXISTS (SELECT 1 FROM file_chunks c WHERE c.file_id = f.id)
             AND ($2::uuid IS NULL OR f.id > $2)
           ORDER BY f.id LIMIT $3""",
        ABANDONED_PREFIX,
        after,
        limit,
    )
    return [r["id"] for r in rows]


async def count_stuck_merging(conn: asyncpg.Pool | asyncpg.Connection, *, minutes: float) -> int:
    """Files in MERGING for longer than `minutes` (the gauge, `status` and the GC agree)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM files WHERE status = 'MERGING'"
            " AND updated_at < now() - make_interval(mins => $1)",
            minutes,
        )
    )
