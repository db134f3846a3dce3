"""A mock's control endpoints, `/__mock__/*`: what a developer or a test uses to see and steer a
mock, apart from the provider's API it serves (simulators/api.py).

- `GET /__mock__/sent`: the messages accepted, oldest first.
- `GET /__mock__/stats`: requests counted by outcome (accepted, throttled, randomly_throttled,
  pair_throttled, unauthorized, unknown_account, rejected, window_closed, template_rejected,
  failed, gateway_timeout; then async_failed, media_fetched, media_failed, inbound), whether a
  token is expired, and the webhooks (`webhooks`: url, signed, posted, retried, dropped,
  pending; per account when there are several).
- `POST /__mock__/token {"expired": true}` expires the accounts' access tokens (every send: HTTP
  401 code 190/463) and false restores them; `"account": ID` names one account.
- `POST /__mock__/inbound {"from": USER, "text": "hi"}` (optional `"type": "reaction"`, `"at_s"`
  to backdate, `"name"`, `"message_id"` reacted to, `"account"`): a user writes to the account
  (simulators/inbox.py); answers the notification sent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from chat4all_workers.meta.windows import user_key
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.inbox import Inbox, UserMessage
from chat4all_workers.simulators.ledger import Ledger
from chat4all_workers.simulators.reports import USER_MESSAGE_TYPES

log = logging.getLogger(__name__)


class Control:
    def __init__(
        self, channel: str, accounts: Mapping[str, Account], ledger: Ledger, inbox: Inbox
    ) -> None:
        self._channel = channel
        self._accounts = accounts
        self._ledger = ledger
        self._inbox = inbox

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/__mock__/sent", self._sent)
        app.router.add_get("/__mock__/stats", self._stats)
        app.router.add_post("/__mock__/token", self._token)
        app.router.add_post("/__mock__/inbound", self._inbound)

    async def _sent(self, _: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(a) for a in self._ledger.accepted]),
            content_type="application/json",
        )

    async def _stats(self, _: web.Request) -> web.Response:
        accounts = list(self._accounts.values())
        webhooks: dict[str, Any] = (
            accounts[0].callbacks.stats()
            if len(accounts) == 1
            else {a.id: a.callbacks.stats() for a in accounts}
        )
        expired = any(a.token_expired for a in accounts)
        counts = self._ledger.counts
        return web.json_response({**counts, "token_expired": expired, "webhooks": webhooks})

    async def _token(self, request: web.Request) -> web.Response:
        """`{"expired": true}` expires the accounts' access tokens (every send: 401, code 190);
        false restores them. `"account": ID` names one account; absent, every account."""
        try:
            doc = orjson.loads(await request.read())
            expired = doc["expired"]
            if not isinstance(expired, bool):
                raise TypeError("expired must be true or false")
            named = doc.get("account")
            if named is not None and str(named) not in self._accounts:
                raise KeyError(f"no account {named!r} here ({sorted(self._accounts)})")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            expected = '{"expired": bool, "account": optional id}'
            return web.json_response({"error": f"expected {expected}: {exc}"}, status=400)
        chosen = self._accounts.values() if named is None else [self._accounts[str(named)]]
        for account in chosen:
            if expired != account.token_expired:
                log.warning(
                    "mock %s: access token of %s %s",
                    self._channel,
                    account.id,
                    "expired" if expired else "restored",
                )
            account.token_expired = expired
        return web.json_response({"token_expired": expired})

    async def _inbound(self, request: web.Request) -> web.Response:
        """`{"from": USER, "text": "hi"}` (optional `type`, `at_s`, `name`, `message_id`,
        `account`): the user writes to the account; answers the notification sent."""
        try:
            account, message = self.read_inbound(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, TypeError, ValueError, LookupError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        notification = self._inbox.receive(account, message)
        answer: dict[str, Any] = {"notification": notification}
        if (why := account.callbacks.not_sent) is not None:
            answer["not_sent"] = why
        return web.json_response(answer)

    def read_inbound(self, doc: Any) -> tuple[Account, UserMessage]:
        """The body of `POST /__mock__/inbound`; TypeError, ValueError or LookupError say what
        is wrong with it."""
        if not isinstance(doc, dict):
            raise TypeError("expected a JSON object")
        account = self._account_named(doc.get("account"))
        user = doc.get("from")
        if not isinstance(user, str) or not user_key(self._channel, user):
            raise ValueError('"from" must name a user')
        kind = doc.get("type", "text")
        if kind not in USER_MESSAGE_TYPES:
            raise ValueError(f'"type" must be one of {", ".join(USER_MESSAGE_TYPES)}')
        text = doc.get("text", "\N{THUMBS UP SIGN}" if kind == "reaction" else "hi")
        name = doc.get("name", "Mock user")
        if not isinstance(text, str) or not isinstance(name, str):
            raise TypeError('"text" and "name" must be strings')
        at_s = doc.get("at_s")
        if at_s is not None and not _past_unix_seconds(at_s):
            raise ValueError('"at_s" must be Unix seconds, not in the future')
        reacting_to = ""
        if kind == "reaction":
            reacting_to = str(doc.get("message_id") or self._ledger.last_sent_to(account.id, user))
            if not reacting_to:
                raise ValueError(f'no message sent to {user}: give "message_id"')
        return account, UserMessage(user, text, kind, at_s, name, reacting_to)

    def _account_named(self, name: Any) -> Account:
        if name is None and len(self._accounts) == 1:
            return next(iter(self._accounts.values()))
        if name is None:
            raise LookupError(f'several accounts: name one in "account" ({sorted(self._accounts)})')
        if (account := self._accounts.get(str(name))) is None:
            raise LookupError(f"no account {name!r} here ({sorted(self._accounts)})")
        return account


def _past_unix_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= time.time()
    )
