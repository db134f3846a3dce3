"""Writing accounts and apps: each secret sealed for the row it goes to, then stored
(db/accounts.py), whose triggers notify every directory. The CLI's `accounts` commands write
through here, and so do the tests: one writer of the fact."""

from __future__ import annotations

import asyncpg

from chat4all_workers.accounts.sealing import Keyring, account_aad, app_aad
from chat4all_workers.db import accounts as store
from chat4all_workers.db.accounts import AccountFields, AccountRow, AppRow


async def put_account(
    conn: asyncpg.Connection,
    keyring: Keyring,
    *,
    channel: str,
    key: str,
    provider_id: str,
    app_id: str,
    token: str,
    max_rate_per_s: float | None = None,
    pair_burst: int | None = None,
    pair_interval_s: float | None = None,
    replace: bool = False,
) -> AccountRow | None:
    """Add the account (or, with `replace`, redefine it); None: it exists and `replace` is
    false. ProviderIdTakenError: another key of the channel has this provider id."""
    fields = AccountFields(
        channel=channel,
        key=key,
        provider_id=provider_id,
        app_id=app_id,
        token_sealed=keyring.seal(token, aad=account_aad(channel, key)),
        max_rate_per_s=max_rate_per_s,
        pair_burst=pair_burst,
        pair_interval_s=pair_interval_s,
    )
    return await store.put_account(conn, fields, replace=replace)


async def rotate_token(
    conn: asyncpg.Connection, keyring: Keyring, *, channel: str, key: str, token: str
) -> AccountRow | None:
    """The account's new token; None: no such account."""
    sealed = keyring.seal(token, aad=account_aad(channel, key))
    return await store.set_token(conn, channel, key, token_sealed=sealed)


async def put_app(
    conn: asyncpg.Connection,
    keyring: Keyring,
    *,
    app_id: str,
    secret: str,
    verify_token: str,
    replace: bool = False,
) -> AppRow | None:
    """Add the Meta app (or, with `replace`, give it new secrets); None: it exists and `replace`
    is false."""
    return await store.put_app(
        conn,
        app_id,
        secret_sealed=keyring.seal(secret, aad=app_aad(app_id, "secret")),
        verify_token_sealed=keyring.seal(verify_token, aad=app_aad(app_id, "verify_token")),
        replace=replace,
    )
