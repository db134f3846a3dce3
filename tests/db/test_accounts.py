"""The accounts' SQL against the real PostgreSQL, in a schema of the test's own (db/accounts.py
and migration 0003): what the tables refuse, how writes bump a row's version, and the
notification every committed change sends (and a change that changes nothing does not)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from chat4all_workers.db import accounts
from chat4all_workers.db.accounts import AccountFields, ProviderIdTakenError
from tests.db.conftest import PgSchema

pytestmark = pytest.mark.stack

NOTIFICATION_TIMEOUT_S = 10.0


def fields(key: str = "acme", provider_id: str = "1001", **changes: object) -> AccountFields:
    values: dict[str, object] = {
        "channel": "whatsapp",
        "key": key,
        "provider_id": provider_id,
        "app_id": "123",
        "token_sealed": b"k1:sealed-" + key.encode(),
        **changes,
    }
    return AccountFields(**values)  # type: ignore[arg-type]


class Notifications:
    """The payloads of `chat4all_accounts` notifications one connection received, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.queue.put_nowait(payload)

    async def until(self, payload: str) -> list[str]:
        """Every payload received up to and including `payload` (notifications arrive in commit
        order, so what committed before it has arrived too)."""
        seen: list[str] = []
        async with asyncio.timeout(NOTIFICATION_TIMEOUT_S):
            while not seen or seen[-1] != payload:
                seen.append(await self.queue.get())
        return seen


@pytest.fixture
async def notifications(pg_schema: PgSchema) -> AsyncIterator[Notifications]:
    listener = await pg_schema.connect()
    received = Notifications()
    await listener.add_listener(accounts.NOTIFY_CHANNEL, received)
    yield received
    await listener.remove_listener(accounts.NOTIFY_CHANNEL, received)


async def raw_insert(conn: asyncpg.Connection, channel: str, key: str, **columns: object) -> None:
    values = {"provider_id": "1", "app_id": "123", "token_sealed": b"x", **columns}
    names = ", ".join(values)
    marks = ", ".join(f"${n}" for n in range(3, len(values) + 3))
    await conn.execute(
        f"INSERT INTO accounts (channel, key, {names}) VALUES ($1, $2, {marks})",
        channel,
        key,
        *values.values(),
    )


# -- what the tables refuse ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "key", "columns", "constraint"),
    [
        ("whatsapp", "default", {}, "accounts_not_default"),
        ("telegram", "acme", {}, "accounts_channel"),
        ("whatsapp", "Acme", {}, "accounts_key_format"),
        ("whatsapp", "-acme", {}, "accounts_key_format"),
        ("whatsapp", "a" * 65, {}, "accounts_key_format"),
        ("whatsapp", "acme", {"provider_id": ""}, "accounts_provider_id_format"),
        ("whatsapp", "acme", {"max_rate_per_s": float("nan")}, "accounts_rate"),
        ("whatsapp", "acme", {"max_rate_per_s": float("inf")}, "accounts_rate"),
        ("whatsapp", "acme", {"max_rate_per_s": -1.0}, "accounts_rate"),
        ("whatsapp", "acme", {"pair_burst": -1}, "accounts_pair_burst"),
        ("whatsapp", "acme", {"pair_interval_s": -0.5}, "accounts_pair_interval"),
    ],
)
async def test_accounts_table_refuses_a_row_breaking_its_rules(
    conn: asyncpg.Connection,
    channel: str,
    key: str,
    columns: dict[str, object],
    constraint: str,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as error:
        await raw_insert(conn, channel, key, **columns)

    assert error.value.constraint_name == constraint


async def test_accounts_table_takes_a_key_of_the_documented_format(
    conn: asyncpg.Connection,
) -> None:
    await raw_insert(conn, "instagram", "acme-br_2.x", max_rate_per_s=0.0, pair_burst=0)

    assert await accounts.find_account(conn, "instagram", "acme-br_2.x") is not None


@pytest.mark.parametrize("app_id", ["default-whatsapp", "default-instagram", "Bad id"])
async def test_accounts_apps_table_refuses_the_environments_ids_and_bad_ones(
    conn: asyncpg.Connection, app_id: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await accounts.put_app(
            conn, app_id, secret_sealed=b"s", verify_token_sealed=b"v", replace=False
        )


# -- writes ----------------------------------------------------------------------------------------


async def test_accounts_put_account_adds_it_with_version_1_and_channel_paces(
    conn: asyncpg.Connection,
) -> None:
    row = await accounts.put_account(conn, fields(), replace=False)

    assert row is not None
    assert (row.ref, row.provider_id, row.app_id, row.version) == (
        "whatsapp/acme",
        "1001",
        "123",
        1,
    )
    assert (row.max_rate_per_s, row.pair_burst, row.pair_interval_s) == (None, None, None)
    assert row.enabled is True
    assert row.token_sealed == b"k1:sealed-acme"


async def test_accounts_put_account_leaves_an_existing_key_alone_unless_replacing(
    conn: asyncpg.Connection,
) -> None:
    await accounts.put_account(conn, fields(max_rate_per_s=5.0), replace=False)

    refused = await accounts.put_account(conn, fields(provider_id="1002"), replace=False)
    kept = await accounts.find_account(conn, "whatsapp", "acme")

    assert refused is None
    assert kept is not None
    assert (kept.provider_id, kept.max_rate_per_s, kept.version) == ("1001", 5.0, 1)


async def test_accounts_put_account_replacing_takes_every_field_and_keeps_it_disabled(
    conn: asyncpg.Connection,
) -> None:
    await accounts.put_account(conn, fields(max_rate_per_s=5.0), replace=False)
    await accounts.set_enabled(conn, "whatsapp", "acme", enabled=False)

    row = await accounts.put_account(
        conn, fields(provider_id="1002", token_sealed=b"k1:new", pair_burst=3), replace=True
    )

    assert row is not None
    assert (row.provider_id, row.token_sealed, row.max_rate_per_s, row.pair_burst) == (
        "1002",
        b"k1:new",
        None,
        3,
    )
    assert row.enabled is False
    assert row.version == 3
    assert row.updated_at > row.created_at


async def test_accounts_put_account_refuses_a_provider_id_another_key_has(
    conn: asyncpg.Connection,
) -> None:
    await accounts.put_account(conn, fields("acme", "1001"), replace=False)

    with pytest.raises(
        ProviderIdTakenError, match="provider id 1001 is already account whatsapp/acme"
    ):
        await accounts.put_account(conn, fields("other", "1001"), replace=False)


async def test_accounts_one_provider_id_may_serve_both_channels(conn: asyncpg.Connection) -> None:
    await accounts.put_account(conn, fields("acme", "1001"), replace=False)

    row = await accounts.put_account(
        conn, fields("acme", "1001", channel="instagram"), replace=False
    )

    assert row is not None


async def test_accounts_set_token_and_set_enabled_bump_the_version(
    conn: asyncpg.Connection,
) -> None:
    await accounts.put_account(conn, fields(), replace=False)

    rotated = await accounts.set_token(conn, "whatsapp", "acme", token_sealed=b"k1:rotated")
    disabled = await accounts.set_enabled(conn, "whatsapp", "acme", enabled=False)
    again = await accounts.set_enabled(conn, "whatsapp", "acme", enabled=False)

    assert rotated is not None
    assert disabled is not None
    assert again is not None
    assert (rotated.version, rotated.token_sealed) == (2, b"k1:rotated")
    assert (disabled.version, disabled.enabled) == (3, False)
    assert again.version == 3  # nothing changed: no new version


async def test_accounts_writes_to_a_missing_account_find_none(conn: asyncpg.Connection) -> None:
    assert await accounts.set_enabled(conn, "whatsapp", "nobody", enabled=False) is None
    assert await accounts.set_token(conn, "whatsapp", "nobody", token_sealed=b"x") is None
    assert await accounts.find_account(conn, "whatsapp", "nobody") is None


async def test_accounts_put_app_adds_replaces_or_leaves_it(conn: asyncpg.Connection) -> None:
    added = await accounts.put_app(
        conn, "123", secret_sealed=b"s1", verify_token_sealed=b"v1", replace=False
    )
    left = await accounts.put_app(
        conn, "123", secret_sealed=b"s2", verify_token_sealed=b"v2", replace=False
    )
    replaced = await accounts.put_app(
        conn, "123", secret_sealed=b"s3", verify_token_sealed=b"v3", replace=True
    )

    assert added is not None
    assert left is None
    assert replaced is not None
    assert (replaced.secret_sealed, replaced.verify_token_sealed) == (b"s3", b"v3")
    assert replaced.updated_at > added.updated_at


async def test_accounts_load_reads_every_app_and_account(conn: asyncpg.Connection) -> None:
    await accounts.put_app(conn, "123", secret_sealed=b"s", verify_token_sealed=b"v", replace=False)
    await accounts.put_account(conn, fields("b", "2"), replace=False)
    await accounts.put_account(conn, fields("a", "1", channel="instagram"), replace=False)

    apps, rows = await accounts.load(conn)

    assert [app.ref for app in apps] == ["app/123"]
    assert [row.ref for row in rows] == ["instagram/a", "whatsapp/b"]


# -- notifications -------------------------------------------------------------------------------


async def test_accounts_every_committed_change_notifies_its_row(
    conn: asyncpg.Connection, notifications: Notifications
) -> None:
    await accounts.put_app(conn, "123", secret_sealed=b"s", verify_token_sealed=b"v", replace=False)
    await accounts.put_account(conn, fields(), replace=False)
    await accounts.set_token(conn, "whatsapp", "acme", token_sealed=b"k1:rotated")
    await accounts.set_enabled(conn, "whatsapp", "acme", enabled=False)
    await conn.execute("DELETE FROM accounts")
    await accounts.put_account(conn, fields("done", "9"), replace=False)

    seen = await notifications.until("whatsapp/done")

    assert seen == [
        "app/123",
        "whatsapp/acme",
        "whatsapp/acme",
        "whatsapp/acme",
        "whatsapp/acme",
        "whatsapp/done",
    ]


async def test_accounts_a_rolled_back_change_or_one_that_changes_nothing_notifies_no_one(
    conn: asyncpg.Connection, notifications: Notifications
) -> None:
    await accounts.put_account(conn, fields(), replace=False)
    await notifications.until("whatsapp/acme")
    tx = conn.transaction()
    await tx.start()
    await accounts.put_account(conn, fields("ghost", "7"), replace=False)
    await tx.rollback()
    await accounts.set_enabled(conn, "whatsapp", "acme", enabled=True)  # already enabled
    await accounts.put_account(conn, fields("marker", "8"), replace=False)

    seen = await notifications.until("whatsapp/marker")

    assert seen == ["whatsapp/marker"]
