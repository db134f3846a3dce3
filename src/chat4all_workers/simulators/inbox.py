"""Users write to a mock's accounts: each message opens or refreshes the user's customer service
window with that account, and the app is sent the inbound webhook Meta would send.

Windows are per (account, user), a WhatsApp user being its wa_id (the number's digits). The
users of `mocks.open_windows_for` write to every account at start-up (`open_windows`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import orjson

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.windows import user_key
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.callbacks import Stage
from chat4all_workers.simulators.ledger import Ledger
from chat4all_workers.simulators.reports import user_message

OPENING_TEXT = "hi (mocks.open_windows_for)"


@frozen
class UserMessage:
    """What a user writes: a text, or a reaction to one of the account's messages."""

    user: str
    text: str
    kind: str = "text"  # one of reports.USER_MESSAGE_TYPES
    at_s: float | None = None  # when, Unix seconds; None: now
    name: str = "Mock user"  # the user's profile name
    reacting_to: str = ""  # a reaction's message (the provider's id)


class Inbox:
    def __init__(self, channel: str, ledger: Ledger) -> None:
        self._channel = channel
        self._ledger = ledger
        self._ids = itertools.count(1)
        self._prefix = "wamid.MOCKIN" if channel == "whatsapp" else "mid.MOCKIN"

    def receive(self, account: Account, message: UserMessage) -> dict[str, Any]:
        """A user's message to the account: their window opens or refreshes, and the app is
        sent the webhook Meta would send; returns its notification."""
        now_s = time.time()
        at_s = now_s if message.at_s is None else message.at_s
        key = user_key(self._channel, message.user)
        account.windows.record(key, at_s, now_s=now_s)
        self._ledger.count("inbound")
        notification = user_message(
            self._channel,
            account_id=account.id,
            user=key,
            provider_message_id=f"{self._prefix}{next(self._ids):012d}",
            kind=message.kind,
            text=message.text,
            at_s=at_s,
            name=message.name,
            reacting_to=message.reacting_to,
        )
        body = orjson.dumps(notification)
        account.callbacks.schedule([Stage(0.0, lambda _now_s: body)])
        return notification

    def open_windows(self, users: Iterable[str], accounts: Iterable[Account]) -> None:
        """Each of `users` writes to every account (start-up: `mocks.open_windows_for`)."""
        accounts = list(accounts)
        for user in users:
            for account in accounts:
                self.receive(account, UserMessage(user, OPENING_TEXT))
