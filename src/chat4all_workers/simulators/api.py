"""A local simulator of the WhatsApp Cloud API and the Instagram Messaging API, for development.

It answers the same HTTP shapes as the real services (`POST /{version}/{account}/messages` with a
bearer token), so the real adapters are what talk to it, and it refuses what Meta refuses: what
a mock forgives, production punishes. Each behaviour is Meta's by default and switchable under
`[mocks]` (simulators/settings.py). A send is checked in this order:

1. credentials (`check_credentials`): no token or another one, HTTP 401 code 190 "Invalid OAuth
   access token - Cannot parse access token"; the account's token expired (`token_expired`, or
   at run time `POST /__mock__/token {"expired": true}` and back with false), HTTP 401 code
   190/463; an account id in the URL the mock does not serve (or not with that token), HTTP 400
   code 100/33 (GraphMethodException);
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

Accepted, it is listed (`GET /__mock__/sent`) and answered 200, or 504 with a gateway's HTML
page at `gateway_timeout_rate` (taken all the same: an answer that proves nothing). Like Meta, a
request it accepted is processed to the end even when the client stopped waiting (timed out,
disconnected): that is what makes a provider slower than the client's timeout a real test of the
router's in-doubt handling.

Then, like Meta, it calls the app back (simulators/reports.py, simulators/callbacks.py): signed
webhooks POSTed to the account's webhook URL, echoing the callback data the adapters set
verbatim. A media message is first fetched from its link (`fetch_media`, simulators/media.py);
a link that cannot be fetched fails it asynchronously (WhatsApp `sent`, then `failed` with code
131053; Instagram nothing at all). At `async_failure_rate` an accepted WhatsApp message gets
`sent`, then `failed` with `async_failure_code` instead of delivered and read.

A user writes to the account with `POST /__mock__/inbound {"from": USER, "text": "hi"}`
(optional `"type": "reaction"`, `"at_s"` to backdate, `"name"`, `"message_id"` reacted to,
`"account"`): the mock records it (the user's window opens or refreshes) and sends the app the
inbound webhook Meta would; `open_windows_for` writes so at start-up. Windows are per (account,
user), a WhatsApp user being its wa_id (the number's digits).

`GET /__mock__/stats` counts requests by outcome (accepted, throttled, randomly_throttled,
pair_throttled, unauthorized, unknown_account, rejected, window_closed, template_rejected,
failed, gateway_timeout; then async_failed, media_fetched, media_failed, inbound) and the
webhooks (`webhooks`: url, signed, posted, retried, dropped, pending), so a developer (or a test)
can see exactly what was delivered and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.meta.events import StatusError
from chat4all_workers.meta.windows import user_key
from chat4all_workers.serving import serving
from chat4all_workers.simulators import answers
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.callbacks import Stage
from chat4all_workers.simulators.media import MediaFetcher
from chat4all_workers.simulators.reports import (
    USER_MESSAGE_TYPES,
    Delivery,
    message_callbacks,
    user_message,
)
from chat4all_workers.simulators.sends import (
    Send,
    content_refusal,
    parse_send,
    template_refusal,
    window_refusal,
)
from chat4all_workers.simulators.settings import MockSettings

log = logging.getLogger(__name__)

_MAX_REMEMBERED = 100_000  # accepted messages kept for /__mock__/sent
_FLUSH_CAP_S = 10.0  # the longest a stopping mock flushes its webhooks
_MEDIA_UPLOAD_ERROR = 131053
_OPENING_TEXT = "hi (mocks.open_windows_for)"
_OUTCOMES = (
    "requests", "accepted", "throttled", "randomly_throttled", "pair_throttled", "unauthorized",
    "unknown_account", "rejected", "window_closed", "template_rejected", "failed",
    "gateway_timeout", "async_failed", "media_fetched", "media_failed", "inbound",
)  # fmt: skip


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str
    message_id: str | None
    conversation_id: int | None
    recipient: str
    text: str
    accepted_at: float
    account: str
    kind: str = "text"  # text, template, or the media type it went as


class MockChannel:
    def __init__(
        self,
        channel: str,
        settings: MockSettings,
        accounts: Sequence[Account],
        *,
        seed: int | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.accounts = {account.id: account for account in accounts}
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self._inbound_ids = itertools.count(1)
        self.accepted: deque[Accepted] = deque(maxlen=_MAX_REMEMBERED)
        self.stats: dict[str, int] = dict.fromkeys(_OUTCOMES, 0)
        self._whatsapp = channel == "whatsapp"
        self._throttle_code = 130429 if self._whatsapp else 613
        self._templates = settings.template_params()
        self._media = MediaFetcher(timeout_s=settings.media_fetch_timeout_s)
        self._fetches: asyncio.TaskGroup | None = None  # while serving
        self._fetching: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        app.router.add_get("/__mock__/sent", self._sent)
        app.router.add_get("/__mock__/stats", self._stats)
        app.router.add_post("/__mock__/token", self._token)
        app.router.add_post("/__mock__/inbound", self._inbound)
        return app

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str, port: int, *, shutdown: ShutdownDeadline | None = None
    ) -> AsyncIterator[int]:
        """Serve on host:port and call back until the block ends (the users of
        `open_windows_for` write first), then finish the requests and media fetches under way
        and flush the pending webhooks, until the shutdown deadline's unwind end (the
        supervisor cancels roles at the next point) and at most `_FLUSH_CAP_S`; yields the
        bound port."""
        accounts = list(self.accounts.values())
        loop = asyncio.get_running_loop()
        async with self._media.open(), asyncio.TaskGroup() as tasks:
            calling_back = [tasks.create_task(a.callbacks.run()) for a in accounts]
            try:
                async with asyncio.TaskGroup() as fetches:
                    self._fetches = fetches
                    # handler_cancellation=False (aiohttp's default, said out loud): a request
                    # whose client went away is still processed to the end, as Meta's would be.
                    async with serving(
                        self.app(),
                        host=host,
                        port=port,
                        handler_cancellation=False,
                        shutdown_timeout=5.0,
                    ) as bound:
                        try:
                            self._open_windows()
                            yield bound
                        finally:
                            # From now on every webhook is due at once; the requests still
                            # under way finish (and call back) while the server closes.
                            for account in accounts:
                                account.callbacks.start_flushing()
                    until = loop.time() + _FLUSH_CAP_S
                    if shutdown is not None:
                        until = min(until, shutdown.unwind_end())
                    await self._finish_fetches(until)
                for account in accounts:
                    await account.callbacks.flush(until)
            finally:
                self._fetches = None
                for task in calling_back:
                    task.cancel()

    async def _finish_fetches(self, until: float) -> None:
        """Let the media fetches under way end (each then schedules its webhooks) until the
        loop time `until`; cancel the others."""
        if self._fetching:
            await asyncio.wait(
                set(self._fetching), timeout=until - asyncio.get_running_loop().time()
            )
        if self._fetching:
            log.warning(
                "mock %s: %d media fetch(es) cut short by the shutdown: no webhook for them",
                self.channel, len(self._fetching),
            )  # fmt: skip
            for task in self._fetching:
                task.cancel()

    # -- the provider API --------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        self.stats["requests"] += 1
        account = self._authorized(request)
        if isinstance(account, web.Response):
            return account
        try:
            send = parse_send(self.channel, orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, ValueError, AttributeError, TypeError, KeyError) as exc:
            self.stats["rejected"] += 1
            return answers.error(400, f"(#100) Invalid parameter: {exc}", 100)
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        if (throttled := self._throttled(account, send)) is not None:
            return throttled
        if self._draw(self.settings.error_rate):
            self.stats["failed"] += 1
            code = self.settings.error_code or (131000 if self._whatsapp else 2)
            return answers.error(500, "simulated provider failure", code)
        for outcome, refusal_of in (
            ("rejected", self._content_refusal),
            ("window_closed", functools.partial(self._window_refusal, account)),
            ("template_rejected", self._template_refusal),
        ):
            if (refusal := refusal_of(send)) is not None:
                self.stats[outcome] += 1
                return refusal
        accepted = self._accept(account, send)
        if self._draw(self.settings.gateway_timeout_rate):
            self.stats["gateway_timeout"] += 1
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
                self.stats["unauthorized"] += 1
                return answers.error(
                    401, "Invalid OAuth access token - Cannot parse access token", 190
                )
        else:
            owner = self.accounts.get(named) or next(iter(self.accounts.values()))
        if owner.token_expired:
            self.stats["unauthorized"] += 1
            return answers.error(
                401, "Error validating access token: Session has expired", 190, 463
            )
        if self.settings.check_credentials and self.accounts.get(named) is not owner:
            self.stats["unknown_account"] += 1
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
            self.stats["randomly_throttled"] += 1
            if self._whatsapp:
                return answers.error(
                    429, "(#130429) Rate limit hit", 130429,
                    details="Cloud API message throughput has been reached.",
                )  # fmt: skip
            return answers.error(429, "(#4) Application request limit reached", 4)
        now = time.monotonic()
        if account.rate is not None and not account.rate.allow(account.id, now):
            self.stats["throttled"] += 1
            return answers.error(
                self.settings.throttle_status,
                f"(#{self._throttle_code}) Rate limit hit",
                self._throttle_code,
                details="too many messages sent from this account in a short period of time",
            )
        if account.pairs is not None and not account.pairs.allow(send.user, now):
            self.stats["pair_throttled"] += 1
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
        self.accepted.append(accepted)
        self.stats["accepted"] += 1
        # Meta calls back for every message it accepted, ours or not (the webhooks role tells):
        # a media message once its link was fetched.
        fails_later = self._whatsapp and self._draw(self.settings.async_failure_rate)
        if send.media_url is not None and self.settings.fetch_media:
            assert self._fetches is not None, "media is fetched while serving"
            task = self._fetches.create_task(
                self._fetch_then_call_back(account, accepted, send, fails_later=fails_later)
            )
            self._fetching.add(task)
            task.add_done_callback(self._fetching.discard)
        else:
            self._call_back(account, accepted, send, self._async_failure(fails_later))
        return accepted

    def _async_failure(self, fails_later: bool) -> StatusError | None:
        if not fails_later:
            return None
        self.stats["async_failed"] += 1
        return answers.status_error(self.settings.async_failure_code)

    async def _fetch_then_call_back(
        self, account: Account, accepted: Accepted, send: Send, *, fails_later: bool
    ) -> None:
        """Fetch the media as Meta does before it delivers it; a link that cannot be fetched
        fails the message (WhatsApp: a failed status; Instagram: no webhook at all)."""
        assert send.media_url is not None
        problem = await self._media.problem(send.media_url)
        if problem is None:
            self.stats["media_fetched"] += 1
            self._call_back(account, accepted, send, self._async_failure(fails_later))
            return
        self.stats["media_failed"] += 1
        log.info(
            "mock %s: the media of %s could not be fetched (%s): the message fails",
            self.channel, accepted.provider_message_id, problem,
        )  # fmt: skip
        if self._whatsapp:
            self._call_back(account, accepted, send, answers.status_error(_MEDIA_UPLOAD_ERROR))

    def _call_back(
        self, account: Account, accepted: Accepted, send: Send, failure: StatusError | None
    ) -> None:
        delivered_s = self.settings.delivered_after_ms / 1000
        read_s = max(self.settings.read_after_ms / 1000, delivered_s)
        stages = message_callbacks(
            self.channel,
            Delivery(delivered_s, read_s, failure),
            account_id=account.id,
            provider_message_id=accepted.provider_message_id,
            recipient=send.user,
            text=send.text,
            callback_data=send.callback,
        )
        account.callbacks.schedule(stages)

    def _draw(self, share: float) -> bool:
        """True for `share` of the calls, at random."""
        return share > 0 and self._random.random() < share

    # -- a user writes to the account --------------------------------------------------------

    def receive(
        self,
        account: Account,
        user: str,
        *,
        text: str,
        kind: str = "text",
        at_s: float | None = None,
        name: str = "Mock user",
        reacting_to: str = "",
    ) -> dict[str, Any]:
        """A user's message to the account (at `at_s`, Unix seconds; now by default): their
        window opens or refreshes, and the app is sent the webhook Meta would send; returns
        its notification."""
        now_s = time.time()
        at_s = now_s if at_s is None else at_s
        key = user_key(self.channel, user)
        account.windows.record(key, at_s, now_s=now_s)
        self.stats["inbound"] += 1
        prefix = "wamid.MOCKIN" if self._whatsapp else "mid.MOCKIN"
        notification = user_message(
            self.channel,
            account_id=account.id,
            user=key,
            provider_message_id=f"{prefix}{next(self._inbound_ids):012d}",
            kind=kind,
            text=text,
            at_s=at_s,
            name=name,
            reacting_to=reacting_to,
        )
        body = orjson.dumps(notification)
        account.callbacks.schedule([Stage(0.0, lambda _now_s: body)])
        return notification

    def _open_windows(self) -> None:
        """The users of `open_windows_for` write to every account (start-up)."""
        for user in self.settings.users_to_open(self.channel):
            for account in self.accounts.values():
                self.receive(account, user, text=_OPENING_TEXT)

    async def _inbound(self, request: web.Request) -> web.Response:
        """`{"from": USER, "text": "hi"}` (optional `type`, `at_s`, `name`, `message_id`,
        `account`): the user writes to the account; answers the notification sent."""
        try:
            doc = orjson.loads(await request.read())
            if not isinstance(doc, dict):
                raise TypeError("expected a JSON object")
            account = self._account_named(doc.get("account"))
            user = doc.get("from")
            if not isinstance(user, str) or not user_key(self.channel, user):
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
                reacting_to = str(doc.get("message_id") or self._last_sent_to(account, user))
                if not reacting_to:
                    raise ValueError(f'no message sent to {user}: give "message_id"')
        except (orjson.JSONDecodeError, TypeError, ValueError, LookupError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        notification = self.receive(
            account, user, text=text, kind=kind, at_s=at_s, name=name, reacting_to=reacting_to
        )
        answer: dict[str, Any] = {"notification": notification}
        if (why := account.callbacks.not_sent) is not None:
            answer["not_sent"] = why
        return web.json_response(answer)

    def _account_named(self, name: Any) -> Account:
        if name is None and len(self.accounts) == 1:
            return next(iter(self.accounts.values()))
        if name is None:
            raise LookupError(f'several accounts: name one in "account" ({sorted(self.accounts)})')
        if (account := self.accounts.get(str(name))) is None:
            raise LookupError(f"no account {name!r} here ({sorted(self.accounts)})")
        return account

    def _last_sent_to(self, account: Account, user: str) -> str:
        """The newest message the account sent the user, or ""."""
        key = user_key(self.channel, user)
        for accepted in reversed(self.accepted):
            same_user = user_key(self.channel, accepted.recipient) == key
            if accepted.account == account.id and same_user:
                return accepted.provider_message_id
        return ""

    # -- what the mock saw -------------------------------------------------------------------

    async def _sent(self, _: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(a) for a in self.accepted]), content_type="application/json"
        )

    async def _stats(self, _: web.Request) -> web.Response:
        accounts = list(self.accounts.values())
        webhooks: dict[str, Any] = (
            accounts[0].callbacks.stats()
            if len(accounts) == 1
            else {a.id: a.callbacks.stats() for a in accounts}
        )
        expired = any(a.token_expired for a in accounts)
        return web.json_response({**self.stats, "token_expired": expired, "webhooks": webhooks})

    async def _token(self, request: web.Request) -> web.Response:
        """`{"expired": true}` expires the accounts' access tokens (every send: 401, code 190);
        false restores them. `"account": ID` names one account; absent, every account."""
        try:
            doc = orjson.loads(await request.read())
            expired = doc["expired"]
            if not isinstance(expired, bool):
                raise TypeError("expired must be true or false")
            named = doc.get("account")
            if named is not None and str(named) not in self.accounts:
                raise KeyError(f"no account {named!r} here ({sorted(self.accounts)})")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            expected = '{"expired": bool, "account": optional id}'
            return web.json_response({"error": f"expected {expected}: {exc}"}, status=400)
        chosen = self.accounts.values() if named is None else [self.accounts[str(named)]]
        for account in chosen:
            if expired != account.token_expired:
                log.warning(
                    "mock %s: access token of %s %s",
                    self.channel,
                    account.id,
                    "expired" if expired else "restored",
                )
            account.token_expired = expired
        return web.json_response({"token_expired": expired})


def _past_unix_seconds(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= time.time()
    )
