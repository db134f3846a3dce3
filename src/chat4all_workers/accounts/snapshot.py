"""One reload's view of the accounts: the environment's default account and app per channel,
plus the table's rows, opened, as dictionaries the router and the webhooks role read on every
message (plain lookups, no I/O).

The rules are here, apart from when they run (the directory's job): a row whose secret does not
open is left out and named, never guessed at, and the others load; a NULL pace takes the
channel section's value; the environment's `default` account always wins, so a row naming the
same provider id (one number, one account) is left out as shadowed, and the table cannot hold
the `default` key at all (a check constraint).
"""

from __future__ import annotations

from dataclasses import field

from chat4all_workers.accounts.keys import NO_KEY_HINT
from chat4all_workers.accounts.model import Account, MetaApp, environment_accounts
from chat4all_workers.accounts.sealing import Keyring, account_aad, app_aad
from chat4all_workers.config import InstagramSettings, Settings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.db.accounts import AccountRow, AppRow
from chat4all_workers.errors import UnsealError
from chat4all_workers.frozen import frozen


@frozen
class Snapshot:
    accounts: dict[tuple[str, str], Account]  # (channel, key)
    by_provider: dict[tuple[str, str], Account]  # (channel, provider id)
    apps: dict[str, MetaApp]
    account_list: tuple[Account, ...]
    app_list: tuple[MetaApp, ...]
    # Rows left out, by ref (`whatsapp/acme`, `app/123`): why each did not open.
    unsealable: dict[str, str] = field(default_factory=dict)
    # Rows left out because the environment's default account has their provider id.
    shadowed: tuple[str, ...] = ()
    # Accounts whose app is neither in the table nor the environment's (webhooks cannot be
    # checked for them until it is added).
    without_app: tuple[str, ...] = ()

    def same_view(self, other: Snapshot) -> bool:
        """Whether a reader would see the same accounts and apps in both."""
        return self.accounts == other.accounts and self.apps == other.apps


class Unsealer:
    """Opens sealed values with the keyring, remembering what the last reload opened, so a
    reload decrypts only the rows that changed."""

    def __init__(self, keyring: Keyring | None) -> None:
        self._keyring = keyring
        self._opened: dict[tuple[bytes, bytes], Secret] = {}
        self._kept: dict[tuple[bytes, bytes], Secret] = {}

    def open(self, sealed: bytes, *, aad: bytes, ref: str) -> Secret:
        secret = self._opened.get((aad, sealed))
        if secret is None:
            if self._keyring is None:
                raise UnsealError(ref, f"no accounts key: {NO_KEY_HINT}")
            secret = Secret(self._keyring.open(sealed, aad=aad, ref=ref))
        self._kept[(aad, sealed)] = secret
        return secret

    def forget_unused(self) -> None:
        """End of a reload: remember only what it opened."""
        self._opened, self._kept = self._kept, {}


def build_snapshot(
    settings: Settings,
    unsealer: Unsealer,
    app_rows: list[AppRow],
    account_rows: list[AccountRow],
) -> Snapshot:
    env_accounts, env_apps = environment_accounts(settings)
    apps = {app.app_id: app for app in env_apps}
    unsealable: dict[str, str] = {}
    for app_row in app_rows:
        try:
            apps[app_row.app_id] = _app(app_row, unsealer)
        except UnsealError as exc:
            unsealable[exc.ref] = exc.problem
    accounts = {(a.channel, a.key): a for a in env_accounts}
    by_provider = {(a.channel, a.provider_id): a for a in env_accounts}
    shadowed: list[str] = []
    for row in account_rows:
        if (row.channel, row.provider_id) in by_provider:
            shadowed.append(row.ref)
            continue
        try:
            account = _account(row, settings, unsealer)
        except UnsealError as exc:
            unsealable[exc.ref] = exc.problem
            continue
        accounts[(row.channel, row.key)] = account
        by_provider[(row.channel, row.provider_id)] = account
    unsealer.forget_unused()
    return Snapshot(
        accounts=accounts,
        by_provider=by_provider,
        apps=apps,
        account_list=tuple(accounts.values()),
        app_list=tuple(apps.values()),
        unsealable=unsealable,
        shadowed=tuple(shadowed),
        without_app=tuple(a.ref for a in accounts.values() if a.app_id not in apps),
    )


def _app(row: AppRow, unsealer: Unsealer) -> MetaApp:
    return MetaApp(
        app_id=row.app_id,
        secret=unsealer.open(row.secret_sealed, aad=app_aad(row.app_id, "secret"), ref=row.ref),
        verify_token=unsealer.open(
            row.verify_token_sealed, aad=app_aad(row.app_id, "verify_token"), ref=row.ref
        ),
    )


def _account(row: AccountRow, settings: Settings, unsealer: Unsealer) -> Account:
    section: WhatsAppSettings | InstagramSettings = getattr(settings, row.channel)
    token = unsealer.open(row.token_sealed, aad=account_aad(row.channel, row.key), ref=row.ref)
    return Account(
        channel=row.channel,
        key=row.key,
        provider_id=row.provider_id,
        app_id=row.app_id,
        token=token,
        max_rate_per_s=_or(row.max_rate_per_s, section.max_rate_per_s),
        pair_burst=section.pair_burst if row.pair_burst is None else row.pair_burst,
        pair_interval_s=_or(row.pair_interval_s, section.pair_interval_s),
        enabled=row.enabled,
        version=row.version,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
