"""What a sending account and a Meta app are, and the environment's default ones.

A platform serves many businesses: each has its own WhatsApp number(s) and Instagram account,
often under one Meta app, sometimes under several. An `Account` is one of them as the router
sends for it: its channel, the `key` messages name it by (`message_processing.account`), the
provider's id (the WhatsApp phone number id, the Instagram account id: what Meta counts its
limits against and what its webhooks name), its token, the Meta app it belongs to, and its
pace. A `MetaApp` is what the webhooks role needs to trust a notification: the app's secret
(X-Hub-Signature-256) and the verify token of its subscription.

Keys are per channel: a business may be `acme` on both channels. `default` is the account a
message without `account` is sent from: the environment's single account (`WHATSAPP_*`,
`INSTAGRAM_*`), so a deployment with one account changes nothing. Its app is named
`default-whatsapp` / `default-instagram` (the environment has one app secret per channel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from chat4all_workers.config import CHANNELS, InstagramSettings, Settings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.frozen import frozen

DEFAULT_KEY = "default"


def default_app_id(channel: str) -> str:
    """The app id the environment's account of `channel` belongs to."""
    return f"default-{channel}"


@frozen(kw_only=True)
class MetaApp:
    app_id: str
    secret: Secret  # signs every webhook of the app (X-Hub-Signature-256)
    verify_token: Secret  # Meta's subscription check (hub.verify_token) echoes it


@frozen(kw_only=True)
class Account:
    channel: str  # whatsapp | instagram
    key: str  # what messages name it by; unique per channel
    provider_id: str  # phone number id / Instagram account id
    app_id: str
    token: Secret
    max_rate_per_s: float  # 0 = not paced
    pair_burst: int  # 0 = no pair limit
    pair_interval_s: float
    enabled: bool = True
    # Bumped by every change of the row (a rotated token too): a holder of an older version
    # rebuilds what it made from it.
    version: int = 0

    @property
    def ref(self) -> str:
        """`channel/key`: how logs, errors, /readyz and the CLI name it."""
        return f"{self.channel}/{self.key}"


def environment_accounts(settings: Settings) -> tuple[list[Account], list[MetaApp]]:
    """The environment's default account and app per channel (a channel without a provider id
    configured has no default account: a message that names none fails `unknown_account`)."""
    accounts: list[Account] = []
    apps: list[MetaApp] = []
    for channel in CHANNELS:
        section: WhatsAppSettings | InstagramSettings = getattr(settings, channel)
        app_id = default_app_id(channel)
        apps.append(
            MetaApp(app_id=app_id, secret=section.app_secret, verify_token=section.verify_token)
        )
        provider_id = section.provider_id
        if not provider_id:
            continue
        accounts.append(
            Account(
                channel=channel,
                key=DEFAULT_KEY,
                provider_id=provider_id,
                app_id=app_id,
                token=section.access_token,
                max_rate_per_s=section.max_rate_per_s,
                pair_burst=section.pair_burst,
                pair_interval_s=section.pair_interval_s,
            )
        )
    return accounts, apps


class Directory(Protocol):
    """Where a process finds its accounts and apps: lookups without I/O, on every message
    (accounts/directory.py keeps them current from PostgreSQL; `FixedDirectory` holds a list)."""

    def find(self, channel: str, key: str | None) -> Account | None:
        """The account `key` of `channel` (None: the default), disabled ones included."""
        ...

    def by_provider_id(self, channel: str, provider_id: str) -> Account | None: ...

    def app(self, app_id: str) -> MetaApp | None: ...

    def apps(self) -> Sequence[MetaApp]: ...

    def accounts(self) -> Sequence[Account]: ...

    async def refresh(self) -> None:
        """Look again now (a lookup missed: the account may be a moment old)."""
        ...

    @property
    def generation(self) -> int:
        """Bumped by every change of what the lookups answer."""
        ...

    async def wait_changed(self, since: int) -> int:
        """Wait until `generation` is past `since`; the new one."""
        ...


class FixedDirectory:
    """A directory that never changes: the environment's accounts (a process without the
    accounts table), or a test's."""

    def __init__(self, accounts: Iterable[Account], apps: Iterable[MetaApp]) -> None:
        self._accounts = {(a.channel, a.key): a for a in accounts}
        self._by_provider = {(a.channel, a.provider_id): a for a in self._accounts.values()}
        self._apps = {app.app_id: app for app in apps}

    @classmethod
    def from_settings(cls, settings: Settings) -> FixedDirectory:
        return cls(*environment_accounts(settings))

    def find(self, channel: str, key: str | None) -> Account | None:
        return self._accounts.get((channel, DEFAULT_KEY if key is None else key))

    def by_provider_id(self, channel: str, provider_id: str) -> Account | None:
        return self._by_provider.get((channel, provider_id))

    def app(self, app_id: str) -> MetaApp | None:
        return self._apps.get(app_id)

    def apps(self) -> Sequence[MetaApp]:
        return list(self._apps.values())

    def accounts(self) -> Sequence[Account]:
        return list(self._accounts.values())

    async def refresh(self) -> None:
        """Nothing to look at again: the list never changes."""

    @property
    def generation(self) -> int:
        return 0

    async def wait_changed(self, since: int) -> int:
        """Never: the list never changes."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")
