"""A mock's provider API: `POST /{version}/{account}/messages` with a bearer token, the shape of
the WhatsApp Cloud API and the Instagram Messaging API, so the real adapters are what talk to
it; and it refuses what Meta refuses: what a mock forgives, production punishes. Each behaviour
is Meta's by default and switchable under `[mocks]` (simulators/settings.py). A send is checked
in this order:

1. credentials (`check_credentials`): no token or another one, HTTP 401 code 190 "Invalid OAuth
   access token - Cannot parse access token"; the account's token expired (`token_expired`, or
   at run time `POST /__mock__/token`, simulators/control.py), HTTP 401 code 190/463; an account
   id in the URL the mock does not serve (or not with that token), HTTP 400 code 100/33
   (GraphMethodException);
2. a body it cannot read: HTTP 400 code 100; then `latency_ms`;
3. throttling, the message not taken: `random_throttle_rate` of the calls at random, HTTP 429
   code 130429 (WhatsApp) / 4 (Instagram); over the account's rate (`whatsapp_rate_per_s` 80,
   `instagram_rate_per_s` 300, a burst of one second's worth), HTTP `throttle_status` (400 as
   Meta, or 429) code 130429 / 613; WhatsApp's pair limit per (account, user), a burst of
   `pair_burst` (45) then one per `pair_interval_s` (6 s), HTTP 400 code 131056;
4. HTTP 500 at `error_rate` (code `error_code`, 0: 131000 / 2);
5. what Meta refuses of the message itself (simulators/sends.py): a recipient containing
   "invalid" (WhatsApp 131026, Instagram 100/2018001), a text over the channel's limit (4,096
   characters, 1,000 bytes: 100); a free-form message (text, media) to a user whose window is
   closed (`windows` "enforce": WhatsApp HTTP 400 code 131047, Instagram HTTP 403 code
   10/2534022; Instagram's HUMAN_AGENT tag allows `human_agent_window_s` instead of `window_s`;
   WhatsApp templates need no window); a template not approved in that language (HTTP 404 code
   132001) or with another number of body parameters (HTTP 400 code 132000), from `templates`.

Accepted, it is listed (simulators/ledger.py: `GET /__mock__/sent`) and answered 200, or 504
with a gateway's HTML page at `gateway_timeout_rate` (taken all the same: an answer that proves
nothing). Then it is processed as Meta would (simulators/processing.py): its media fetched, the
app called back; at `async_failure_rate` an accepted WhatsApp message fails later.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import time
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass

import orjson
from aiohttp import web

from chat4all_workers.simulators import answers
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.ledger import Accepted, Ledger
from chat4all_workers.simulators.processing import Processing
from chat4all_workers.simulators.sends import (
    Send,
    content_refusal,
    parse_send,
    template_refusal,
    window_refusal,
)
from chat4all_workers.simulators.settings import MockSettings


@dataclass(eq=False)
class ProviderApi:
    channel: str
    settings: MockSettings
    accounts: Mapping[str, Account]
    _: KW_ONLY
    ledger: Ledger
    processing: Processing
    draws: random.Random  # every outcome drawn at random (throttles, failures, timeouts)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._whatsapp = self.channel == "whatsapp"
        self._throttle_code = 130429 if self._whatsapp else 613
        self._templates = self.settings.template_params()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{account}/messages", self._messages)

    async def _messages(self, request: web.Request) -> web.Response:
        self.ledger.count("requests")
        account = self._authorized(request)
        if isinstance(account, web.Response):
            return account
        try:
            send = parse_send(self.channel, orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ValueError, AttributeError, TypeError, KeyError) as exc:
            self.ledger.count("rejected")
            return answers.error(400, f"(#100) Invalid parameter: {exc}", 100)
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        if (throttled := self._throttled(account, send)) is not None:
            return throttled
        if self._draw(self.settings.error_rate):
            self.ledger.count("failed")
            code = self.settings.error_code or (131000 if self._whatsapp else 2)
            return answers.error(500, "simulated provider failure", code)
        for outcome, refusal_of in (
            ("rejected", self._content_refusal),
            ("window_closed", functools.partial(self._window_refusal, account)),
            ("template_rejected", self._template_refusal),
        ):
            if (refusal := refusal_of(send)) is not None:
                self.ledger.count(outcome)
                return refusal
        accepted = self._accept(account, send)
        if self._draw(self.settings.gateway_timeout_rate):
            self.ledger.count("gateway_timeout")
            return answers.gateway_timeout()
        if self._whatsapp:
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": send.recipient, "wa_id": send.user}],
                    "messages": [{"id": accepted.provider_message_id}],
                }
            )
        return web.json_response(
            {"recipient_id": send.recipient, "message_id": accepted.provider_message_id}
        )

    def _authorized(self, request: web.Request) -> Account | web.Response:
        """The account a send is for, or Meta's answer to a token or an account id it
        refuses."""
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        named = request.match_info["account"]
        if self.settings.check_credentials:
            owner = next((a for a in self.accounts.values() if token == a.access_token), None)
            if not token or owner is None:
                self.ledger.count("unauthorized")
                return answers.error(
                    401, "Invalid OAuth access token - Cannot parse access token", 190
                )
        else:
            owner = self.accounts.get(named) or next(iter(self.accounts.values()))
        if owner.token_expired:
            self.ledger.count("unauthorized")
            return answers.error(
                401, "Error validating access token: Session has expired", 190, 463
            )
        if self.settings.check_credentials and self.accounts.get(named) is not owner:
            self.ledger.count("unknown_account")
            return answers.error(
                400,
                f"Unsupported post request. Object with ID '{named}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation",
                100,
                33,
                kind=answers.GRAPH_METHOD,
            )
        return owner

    def _throttled(self, account: Account, send: Send) -> web.Response | None:
        """Meta's throttling answers (the message not taken), or None."""
        if self._draw(self.settings.random_throttle_rate):
            self.ledger.count("randomly_throttled")
            if self._whatsapp:
                return answers.error(
                    429, "(#130429) Rate limit hit", 130429,
                    details="Cloud API message throughput has been reached.",
                )  # fmt: skip
            return answers.error(429, "(#4) Application request limit reached", 4)
        now = time.monotonic()
        if account.rate is not None and not account.rate.allow(account.id, now):
            self.ledger.count("throttled")
            return answers.error(
                self.settings.throttle_status,
                f"(#{self._throttle_code}) Rate limit hit",
                self._throttle_code,
                details="too many messages sent from this account in a short period of time",
            )
        if account.pairs is not None and not account.pairs.allow(send.user, now):
            self.ledger.count("pair_throttled")
            return answers.error(
                400,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                131056,
                details="too many messages sent from this phone number to the same recipient",
            )
        return None

    def _content_refusal(self, send: Send) -> web.Response | None:
        return content_refusal(self.channel, send)

    def _window_refusal(self, account: Account, send: Send) -> web.Response | None:
        if self.settings.windows == "open":
            return None
        return window_refusal(
            self.channel,
            send,
            account.windows,
            now_s=time.time(),
            window_s=self.settings.window_s,
            human_agent_window_s=self.settings.human_agent_window_s,
        )

    def _template_refusal(self, send: Send) -> web.Response | None:
        if not self.settings.check_templates:
            return None
        return template_refusal(send, self._templates)

    def _accept(self, account: Account, send: Send) -> Accepted:
        number = next(self._ids)
        prefix = "wamid.MOCK" if self._whatsapp else "mid.MOCK"
        try:
            callback = orjson.loads(send.callback) if send.callback else {}
        except orjson.JSONDecodeError:
            callback = {}
        callback = callback if isinstance(callback, dict) else {}
        conversation = callback.get("conversation_id")
        accepted = Accepted(
            provider_message_id=f"{prefix}{number:012d}",
            message_id=str(callback["message_id"]) if callback.get("message_id") else None,
            conversation_id=conversation if isinstance(conversation, int) else None,
            recipient=send.recipient,
            text=send.text,
            accepted_at=time.time(),
            account=account.id,
            kind=send.kind,
        )
        self.ledger.accept(accepted)
        fails_later = self._whatsapp and self._draw(self.settings.async_failure_rate)
        self.processing.start(account, accepted, send, fails_later=fails_later)
        return accepted

    def _draw(self, share: float) -> bool:
        """True for `share` of the calls, at random."""
        return share > 0 and self.draws.random() < share
