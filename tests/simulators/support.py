"""Simulated accounts for the mocks' unit tests: no stack, webhooks scheduled but never posted
(nothing runs the callbacks), so what a mock scheduled is what `callbacks.stats()` counts."""

from __future__ import annotations

from chat4all_workers.channels.http import HttpClient
from chat4all_workers.simulators.accounts import Account, AccountConfig
from chat4all_workers.simulators.settings import MockSettings


def simulated_account(
    account_id: str = "1001",
    *,
    channel: str = "whatsapp",
    token: str = "token-1001",
    settings: MockSettings | None = None,
    app_secret: str = "app-secret",
) -> Account:
    config = AccountConfig(
        id=account_id,
        access_token=token,
        rate_per_s=0.0,
        webhook_url="http://127.0.0.1:9/hook",
        app_secret=app_secret,
    )
    return Account(config, settings or MockSettings(), channel=channel, http=HttpClient())


def pending_webhooks(account: Account) -> int:
    return int(account.callbacks.stats()["pending"])
