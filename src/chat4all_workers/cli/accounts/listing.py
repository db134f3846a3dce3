"""`accounts list`: the table's accounts and apps, as a table for a person or one JSON document;
never a secret (each says `set`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chat4all_workers.cli.output import out
from chat4all_workers.config import Settings

if TYPE_CHECKING:
    from chat4all_workers.db.accounts import AccountRow, AppRow


def as_json(rows: Sequence[AccountRow], apps: Sequence[AppRow]) -> dict[str, Any]:
    return {"accounts": [_account_doc(r) for r in rows], "apps": [_app_doc(a) for a in apps]}


def _account_doc(row: AccountRow) -> dict[str, Any]:
    return {
        "channel": row.channel,
        "key": row.key,
        "provider_id": row.provider_id,
        "app_id": row.app_id,
        "max_rate_per_s": row.max_rate_per_s,  # null: the channel's
        "pair_burst": row.pair_burst,
        "pair_interval_s": row.pair_interval_s,
        "enabled": row.enabled,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "token": "set",
    }


def _app_doc(row: AppRow) -> dict[str, Any]:
    return {
        "app_id": row.app_id,
        "secret": "set",
        "verify_token": "set",
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }


def render(settings: Settings, rows: Sequence[AccountRow], apps: Sequence[AppRow]) -> None:
    header = ("CHANNEL", "KEY", "PROVIDER ID", "APP", "RATE/S", "PAIR", "ENABLED", "VERSION")
    table = [
        (
            row.channel,
            row.key,
            row.provider_id,
            row.app_id,
            *paces(settings, row),
            "yes" if row.enabled else "no",
            str(row.version),
        )
        for row in rows
    ]
    _table(
        [(*header, "UPDATED", "TOKEN")],
        [(*r, _when(row.updated_at), "set") for r, row in zip(table, rows, strict=True)],
    )
    out("\n")
    _table(
        [("APP", "SECRET", "VERIFY TOKEN", "UPDATED")],
        [(app.app_id, "set", "set", _when(app.updated_at)) for app in apps],
    )


def paces(settings: Settings, row: AccountRow) -> tuple[str, str]:
    """The account's rate and pair limit as the table shows them, its channel's when unset."""
    section = getattr(settings, row.channel)
    rate = (
        f"{row.max_rate_per_s:g}"
        if row.max_rate_per_s is not None
        else (f"{section.max_rate_per_s:g} (default)")
    )
    burst = section.pair_burst if row.pair_burst is None else row.pair_burst
    interval = section.pair_interval_s if row.pair_interval_s is None else row.pair_interval_s
    pair = "off" if burst == 0 else f"{burst}, then 1/{interval:g}s"
    if row.pair_burst is None and row.pair_interval_s is None:
        pair += " (default)"
    return rate, pair


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> None:
    lines = [*header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        out(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            + "\n"
        )
