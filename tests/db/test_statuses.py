"""The status updater's SQL against the real PostgreSQL, in a schema of the test's own
(db/statuses.py): idempotent history rows and the message's overall status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from chat4all_workers.db import statuses
from tests.db.conftest import PgSchema

pytestmark = pytest.mark.stack

AT = datetime(2025, 5, 1, 12, 30, tzinfo=UTC)


async def add_message(
    conn: asyncpg.Connection, *, channels: Any = ("whatsapp", "instagram"), status: str = "SENT"
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO messages (id, conversation_id, channels, status, updated_at)
           VALUES ($1, 42, $2::jsonb, $3, now() - interval '1 hour')""",
        message_id,
        orjson.dumps(channels).decode(),
        status,
    )
    return message_id


async def record(
    conn: asyncpg.Connection,
    message_id: uuid.UUID,
    channel: str,
    status: str,
    details: dict[str, Any] | None = None,
) -> bool:
    return await statuses.record_history(
        conn, message_id=message_id, channel=channel, status=status, details=details or {}, at=AT
    )


async def test_record_history_appends_a_row_with_its_details(conn: asyncpg.Connection) -> None:
    message_id = uuid.uuid4()

    inserted = await record(
        conn, message_id, "whatsapp", "DELIVERED", {"provider_id": "wamid.1", "n": [1, 2]}
    )

    row = await conn.fetchrow(
        """SELECT message_id, channel, status, details::text AS details, "timestamp"
           FROM message_status_history"""
    )
    assert inserted
    assert row is not None
    assert (row["message_id"], row["channel"], row["status"], row["timestamp"]) == (
        message_id,
        "whatsapp",
        "DELIVERED",
        AT,
    )
    assert orjson.loads(row["details"]) == {"provider_id": "wamid.1", "n": [1, 2]}


async def test_record_history_a_redelivered_update_adds_nothing(conn: asyncpg.Connection) -> None:
    message_id = uuid.uuid4()
    await record(conn, message_id, "whatsapp", "DELIVERED", {"first": True})

    again = await record(conn, message_id, "whatsapp", "DELIVERED", {"first": False})

    details = await conn.fetch("SELECT details::text AS d FROM message_status_history")
    assert not again
    assert [orjson.loads(r["d"]) for r in details] == [{"first": True}]


async def test_record_history_keeps_one_row_per_message_channel_and_status(
    conn: asyncpg.Connection,
) -> None:
    message_id, other = uuid.uuid4(), uuid.uuid4()

    inserted = [
        await record(conn, message_id, "whatsapp", "SENT"),
        await record(conn, message_id, "whatsapp", "DELIVERED"),
        await record(conn, message_id, "instagram", "SENT"),
        await record(conn, other, "whatsapp", "SENT"),
        await record(conn, message_id, "whatsapp", "SENT"),
    ]

    assert inserted == [True, True, True, True, False]
    assert await conn.fetchval("SELECT count(*) FROM message_status_history") == 4


async def test_lock_message_reads_status_and_channels(conn: asyncpg.Connection) -> None:
    message_id = await add_message(conn, channels=["whatsapp", "instagram"], status="SENT")

    async with conn.transaction():
        row = await statuses.lock_message(conn, message_id)

    assert row == statuses.MessageRow(status="SENT", channels=["whatsapp", "instagram"])


async def test_lock_message_of_an_unknown_message_is_none(conn: asyncpg.Connection) -> None:
    await add_message(conn)

    async with conn.transaction():
        row = await statuses.lock_message(conn, uuid.uuid4())

    assert row is None


@pytest.mark.parametrize(
    ("channels", "read"),
    [
        (["whatsapp", 7, None, {"x": 1}, "instagram"], ["whatsapp", "instagram"]),
        ({"whatsapp": True}, []),
        ("whatsapp", []),
        ([], []),
    ],
)
async def test_lock_message_keeps_only_the_channel_names_of_a_list(
    conn: asyncpg.Connection, channels: Any, read: list[str]
) -> None:
    message_id = await add_message(conn, channels=channels)

    async with conn.transaction():
        row = await statuses.lock_message(conn, message_id)

    assert row is not None
    assert row.channels == read


async def test_lock_message_holds_the_row_until_the_transaction_ends(
    conn: asyncpg.Connection, pg_schema: PgSchema
) -> None:
    other = await pg_schema.connect()
    message_id = await add_message(conn)
    probe = "SELECT 1 FROM messages WHERE id = $1 FOR UPDATE NOWAIT"

    async with conn.transaction():
        await statuses.lock_message(conn, message_id)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await other.fetchval(probe, message_id)

    assert await other.fetchval(probe, message_id) == 1


async def test_failed_channels_lists_the_channels_that_failed(conn: asyncpg.Connection) -> None:
    message_id, other = uuid.uuid4(), uuid.uuid4()
    await record(conn, message_id, "whatsapp", "FAILED")
    await record(conn, message_id, "instagram", "SENT")
    await record(conn, message_id, "telegram", "FAILED")
    await record(conn, other, "instagram", "FAILED")

    failed = await statuses.failed_channels(conn, message_id)

    assert failed == {"whatsapp", "telegram"}


async def test_failed_channels_of_a_message_without_failures_is_empty(
    conn: asyncpg.Connection,
) -> None:
    message_id = uuid.uuid4()
    await record(conn, message_id, "whatsapp", "DELIVERED")

    assert await statuses.failed_channels(conn, message_id) == set()


async def test_set_status_updates_the_message_and_its_time(conn: asyncpg.Connection) -> None:
    message_id, other = await add_message(conn), await add_message(conn)

    await statuses.set_status(conn, message_id, "DELIVERED")

    rows = await conn.fetch(
        "SELECT id, status, updated_at > now() - interval '1 minute' AS fresh FROM messages"
    )
    assert {r["id"]: (r["status"], r["fresh"]) for r in rows} == {
        message_id: ("DELIVERED", True),
        other: ("SENT", False),
    }
