"""`accounts list` (cli/accounts/listing.py): each account's pace, its channel's when unset, and
never a secret."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from chat4all_workers.cli.accounts.listing import as_json, paces
from chat4all_workers.db.accounts import AccountRow, AppRow
from chat4all_workers.roles import load_settings

MOMENT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ROW = AccountRow(
    channel="whatsapp",
    key="acme",
    provider_id="1001",
    app_id="123",
    token_sealed=b"k1:sealed-token",
    max_rate_per_s=None,
    pair_burst=None,
    pair_interval_s=None,
    enabled=True,
    version=1,
    created_at=MOMENT,
    updated_at=MOMENT,
)


def test_listing_paces_are_the_channels_when_the_account_sets_none() -> None:
    settings = load_settings({})

    rate, pair = paces(settings, ROW)

    assert rate == f"{settings.whatsapp.max_rate_per_s:g} (default)"
    assert pair == (
        f"{settings.whatsapp.pair_burst}, then 1/{settings.whatsapp.pair_interval_s:g}s (default)"
    )


def test_listing_paces_are_the_accounts_own_when_set() -> None:
    row = dataclasses.replace(ROW, max_rate_per_s=5.0, pair_burst=0)

    assert paces(load_settings({}), row) == ("5", "off")


def test_listing_as_json_says_set_for_every_secret() -> None:
    app = AppRow(
        app_id="123",
        secret_sealed=b"k1:sealed-secret",
        verify_token_sealed=b"k1:sealed-verify",
        created_at=MOMENT,
        updated_at=MOMENT,
    )

    doc = as_json([ROW], [app])

    assert doc["accounts"][0]["token"] == "set"
    assert (doc["apps"][0]["secret"], doc["apps"][0]["verify_token"]) == ("set", "set")
    assert "sealed" not in str(doc)
