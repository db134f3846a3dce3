"""The SQL of the accounts directory: the Meta apps (`meta_apps`) and the sending accounts
(`accounts`) as stored, their secrets already sealed (accounts/sealing.py seals and opens them;
this module never sees a secret in clear).

Every write is one statement in a transaction of its own; the tables' triggers bump the row's
`version` and `updated_at` and `NOTIFY chat4all_accounts` in that same transaction, so the
notification goes out when, and only if, the change commits, and a write by hand in psql
notifies the directories too. A write that changes nothing notifies no one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg

from chat4all_workers.frozen import frozen

NOTIFY_CHANNEL = "chat4all_accounts"


@frozen(kw_only=True)
class AppRow:
    app_id: str
    secret_sealed: bytes
    verify_token_sealed: bytes
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"app/{self.app_id}"


@frozen(kw_only=True)
class AccountFields:
    """What a writer sets of an account (the rest is the table's: enabled, version, times)."""

    channel: str
    key: str
    provider_id: str
    app_id: str
    token_sealed: bytes
    # None: the channel section's value.
    max_rate_per_s: float | None = None
    pair_burst: int | None = None
    pair_interval_s: float | None = None


@frozen(kw_only=True)
class AccountRow(AccountFields):
    """An account as stored: what its writer set, and the table's own columns."""

    enabled: bool
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.channel}/{self.key}"


class ProviderIdTakenError(ValueError):
    """Another account of the channel already has this provider id (one number, one account)."""

    def __init__(self, channel: str, provider_id: str, holder: str | None) -> None:
        self.holder = holder
        held = f"account {channel}/{holder}" if holder else "another account"
        super().__init__(f"{channel}: provider id {provider_id} is already {held}")


_APP_COLUMNS = "app_id, secret_sealed, verify_token_sealed, created_at, updated_at"
_ACCOUNT_COLUMNS = """channel, key, provider_id, app_id, token_sealed, max_rate_per_s,
    pair_burst, pair_interval_s, enabled, version, created_at, updated_at"""


def _app(r: asyncpg.Record) -> AppRow:
    return AppRow(**dict(r.items()))


def _account(r: asyncpg.Record) -> AccountRow:
    return AccountRow(**dict(r.items()))


async def load(
    conn: asyncpg.Connection, *, timeout_s: float | None = None
) -> tuple[list[AppRow], list[AccountRow]]:
    """Every app and account, both read from one snapshot (a repeatable-read transaction), so an
    account is never seen without the app a concurrent transaction added with it."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        apps = await conn.fetch(
            f"SELECT {_APP_COLUMNS} FROM meta_apps ORDER BY app_id", timeout=timeout_s
        )
        accounts = await conn.fetch(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY channel, key", timeout=timeout_s
        )
    return [_app(r) for r in apps], [_account(r) for r in accounts]


async def find_app(conn: asyncpg.Connection, app_id: str) -> AppRow | None:
    row = await conn.fetchrow(f"SELECT {_APP_COLUMNS} FROM meta_apps WHERE app_id = $1", app_id)
    return None if row is None else _app(row)


async def find_account(conn: asyncpg.Connection, channel: str, key: str) -> AccountRow | None:
    row = await conn.fetchrow(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE channel = $1 AND key = $2", channel, key
    )
    return None if row is None else _account(row)


async def put_app(
    conn: asyncpg.Connection,
    app_id: str,
    *,
    secret_sealed: bytes,
    verify_token_sealed: bytes,
    replace: bool,
) -> AppRow | None:
    """Add the app; with `replace`, an existing one takes the new secrets. None: it exists and
    `replace` is false (nothing written)."""
    conflict = (
        "DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed, "
        "verify_token_sealed = EXCLUDED.verify_token_sealed"
        if replace
        else "DO NOTHING"
    )
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO meta_apps (app_id, secret_sealed, verify_token_sealed)
                VALUES ($1, $2, $3)
                ON CONFLICT (app_id) {conflict}
                RETURNING {_APP_COLUMNS}""",
            app_id,
            secret_sealed,
            verify_token_sealed,
        )
    return None if row is None else _app(row)


async def put_account(
    conn: asyncpg.Connection, fields: AccountFields, *, replace: bool
) -> AccountRow | None:
    """Add the account; with `replace`, an existing one (same channel and key) takes every field
    given (a pace left None goes back to the channel's) and keeps `enabled`. None: it exists and
    `replace` is false. ProviderIdTakenError: another key of the channel has the provider id."""
    conflict = (
        """DO UPDATE SET provider_id = EXCLUDED.provider_id, app_id = EXCLUDED.app_id,
               token_sealed = EXCLUDED.token_sealed, max_rate_per_s = EXCLUDED.max_rate_per_s,
               pair_burst = EXCLUDED.pair_burst, pair_interval_s = EXCLUDED.pair_interval_s"""
        if replace
        else "DO NOTHING"
    )
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"""INSERT INTO accounts (channel, key, provider_id, app_id, token_sealed,
                        max_rate_per_s, pair_burst, pair_interval_s)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (channel, key) {conflict}
                    RETURNING {_ACCOUNT_COLUMNS}""",
                fields.channel,
                fields.key,
                fields.provider_id,
                fields.app_id,
                fields.token_sealed,
                fields.max_rate_per_s,
                fields.pair_burst,
                fields.pair_interval_s,
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "accounts_provider_id_once":
            raise
        holder = await conn.fetchval(
            "SELECT key FROM accounts WHERE channel = $1 AND provider_id = $2",
            fields.channel,
            fields.provider_id,
        )
        raise ProviderIdTakenError(fields.channel, fields.provider_id, holder) from None
    return None if row is None else _account(row)


async def set_enabled(
    conn: asyncpg.Connection, channel: str, key: str, *, enabled: bool
) -> AccountRow | None:
    """Enable or disable the account; None: no such account."""
    return await _set(conn, channel, key, "enabled", enabled)


async def set_token(
    conn: asyncpg.Connection, channel: str, key: str, *, token_sealed: bytes
) -> AccountRow | None:
    """Replace the account's token (rotation); None: no such account."""
    return await _set(conn, channel, key, "token_sealed", token_sealed)


async def _set(
    conn: asyncpg.Connection,
    channel: str,
    key: str,
    column: Literal["enabled", "token_sealed"],
    value: object,
) -> AccountRow | None:
    """Set one column of the account; None: no such account."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""UPDATE accounts SET {column} = $3 WHERE channel = $1 AND key = $2
                RETURNING {_ACCOUNT_COLUMNS}""",
            channel,
            key,
            value,
        )
    return None if row is None else _account(row)
