"""A local simulator of the WhatsApp Cloud API and the Instagram Messaging API, for development.

It answers the same HTTP shapes as the real services (`POST /{version}/{account}/messages` with a
bearer token), so the real adapters are what talk to it, and it behaves like a real account
(Meta's numbers, all configurable under `[mocks]`):

- a rate per account (`whatsapp_rate_per_s` 80, `instagram_rate_per_s` 300; a burst of up to one
  second's worth), over it HTTP 400 (or `throttle_status` 429) with code 130429 (WhatsApp) or
  613 (Instagram) in Meta's error object;
- WhatsApp's pair limit per (account, recipient): a burst of `pair_burst` (45), then one per
  `pair_interval_s` (6 s), over it HTTP 400 with code 131056;
- an access token that can expire (`token_expired`, or at run time `POST /__mock__/token`
  `{"expired": true}` and back with false): HTTP 401 with code 190, as Meta answers;
- a recipient containing "invalid": HTTP 400 with code 131026 (WhatsApp) or 100/2018001
  (Instagram); a text over the channel's limit (4,096 characters, 1,000 bytes): HTTP 400, code
  100; HTTP 500 at `error_rate`; every answer after `latency_ms`.

Like Meta, it calls the app back (channels/mock_callbacks.py): signed status webhooks POSTed
to `mocks.whatsapp_webhook_url` / `mocks.instagram_webhook_url` (the webhooks role), echoing the
callback data the adapters set verbatim. WhatsApp: `sent` at once, `delivered` after
`delivered_after_ms`, `read` after `read_after_ms`; Instagram: the echo of our message (with its
`metadata`) at once, then a read receipt after `read_after_ms` (Instagram sends no delivery
receipts).

Like Meta, a request it accepted is processed to the end even when the client stopped waiting
(timed out, disconnected): the message is accepted, listed and called back. That is what makes a
provider slower than the client's timeout a real test of the router's in-doubt handling.

`GET /__mock__/sent` lists what it accepted, and `GET /__mock__/stats` counts requests by
outcome (accepted, throttled, pair_throttled, unauthorized, rejected, failed) and the webhooks
(`webhooks`: url, signed, posted, retried, dropped, pending), so a developer (or a test) can see
exactly what was delivered and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import orjson
from aiohttp import web

from chat4all_workers.config import NON_EMPTY, ZERO_OK
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.meta.limits import INSTAGRAM_TEXT_BYTES as TEXT_LIMIT_BYTES
from chat4all_workers.meta.limits import WHATSAPP_TEXT_CHARACTERS as TEXT_LIMIT_CHARACTERS
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_notification,
    instagram_read,
    whatsapp_notification,
    whatsapp_status,
)
from chat4all_workers.serving import serving
from chat4all_workers.simulators.callbacks import Callbacks, Stage

log = logging.getLogger(__name__)

_MAX_REMEMBERED = 100_000  # accepted messages kept for /__mock__/sent
_FLUSH_CAP_S = 10.0  # the longest a stopping mock flushes its webhooks
_MAX_PAIRS = 100_000  # (account, recipient) pair states kept before the expired are dropped


@dataclass(frozen=True, kw_only=True)
class MockSettings:
    """`[mocks]`: the simulated accounts (both mocks share the section)."""

    SECTION: ClassVar[str] = "mocks"

    host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    whatsapp_port: int = field(default=8101, metadata={"min": 0, "max": 65535})
    instagram_port: int = field(default=8102, metadata={"min": 0, "max": 65535})
    latency_ms: float = field(default=0.0, metadata=ZERO_OK)
    error_rate: float = field(default=0.0, metadata={"min": 0, "max": 1})
    # The code of those failures (HTTP 500): 0 is the channel's "something went wrong" (131000,
    # 2), an answer that proves nothing (the router waits for the provider's word); 131057
    # (maintenance) proves the message was not taken (retried at once).
    error_code: int = field(default=0, metadata={"min": 0})
    # Like a real account: sends per second per account (0 = unlimited), answered above it as
    # Meta does, HTTP `throttle_status` with code 130429 (WhatsApp) or 613 (Instagram) in the body.
    whatsapp_rate_per_s: float = field(default=80.0, metadata=ZERO_OK)
    instagram_rate_per_s: float = field(default=300.0, metadata=ZERO_OK)
    throttle_status: int = field(default=400, metadata={"choices": (400, 429)})
    # WhatsApp's pair limit per (account, recipient), code 131056 (0 = off).
    pair_burst: int = field(default=45, metadata=ZERO_OK)
    pair_interval_s: float = 6.0
    # An expired token answers every send with HTTP 401 and code 190; also switchable at run
    # time with POST /__mock__/token {"expired": true|false}.
    token_expired: bool = False
    # Like Meta, the mocks call back with signed status webhooks (signed with the channel's app
    # secret, `whatsapp.app_secret`: the mock plays Meta for this app; no secret, no webhooks):
    # WhatsApp `sent` at once, `delivered` and `read` after these delays; Instagram an echo, then
    # a read receipt after read_after_ms. Retried with backoff until answered 200; flushed on
    # shutdown.
    delivered_after_ms: float = field(default=200.0, metadata=ZERO_OK)
    read_after_ms: float = field(default=500.0, metadata=ZERO_OK)
    whatsapp_webhook_url: str = "http://127.0.0.1:8200/webhooks/whatsapp"
    instagram_webhook_url: str = "http://127.0.0.1:8200/webhooks/instagram"


class _Gcra:
    """A limit of `interval_s` per send with a burst of `burst`, per key (GCRA: the key's
    theoretical arrival time). A refused send does not count."""

    def __init__(self, *, interval_s: float, burst: float) -> None:
        self._interval_s = interval_s
        self._tolerance_s = max(0.0, burst - 1) * interval_s
        self._tat: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        tat = max(self._tat.get(key, now), now)
        if tat - self._tolerance_s > now:
            return False
        if len(self._tat) >= _MAX_PAIRS and key not in self._tat:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        self._tat[key] = tat + self._interval_s
        return True


@dataclass(frozen=True)
class Accepted:
    provider_message_id: str
    message_id: str | None
    conversation_id: int | None
    recipient: str
    text: str
    accepted_at: float


class MockChannel:
    def __init__(
        self,
        channel: str,
        settings: MockSettings,
        callbacks: Callbacks,
        *,
        seed: int | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.callbacks = callbacks
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self.accepted: deque[Accepted] = deque(maxlen=_MAX_REMEMBERED)
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "accepted", "throttled", "pair_throttled", "unauthorized"), 0
        ) | {"rejected": 0, "failed": 0}
        self.token_expired = settings.token_expired
        whatsapp = channel == "whatsapp"
        rate = settings.whatsapp_rate_per_s if whatsapp else settings.instagram_rate_per_s
        # A burst of up to one second's worth, then the rate: what a client pacing at the rate
        # never notices, and one pacing faster soon does.
        self._rate = _Gcra(interval_s=1 / rate, burst=rate) if rate else None
        pair = whatsapp and settings.pair_burst > 0 and settings.pair_interval_s > 0
        self._pairs = (
            _Gcra(interval_s=settings.pair_interval_s, burst=settings.pair_burst) if pair else None
        )
        self._throttle_code = 130429 if whatsapp else 613

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        app.router.add_get("/__mock__/sent", self._sent)
        app.router.add_get("/__mock__/stats", self._stats)
        app.router.add_post("/__mock__/token", self._token)
        return app

    @contextlib.asynccontextmanager
    async def serving(
        self, host: str, port: int, *, shutdown: ShutdownDeadline | None = None
    ) -> AsyncIterator[int]:
        """Serve on host:port and call back until the block ends, then finish the requests
        under way and flush the pending webhooks, until the shutdown deadline's unwind end
        (the supervisor cancels roles at the next point) and at most `_FLUSH_CAP_S`; yields
        the bound port."""
        async with asyncio.TaskGroup() as tasks:
            calling_back = tasks.create_task(self.callbacks.run())
            try:
                # handler_cancellation=False (aiohttp's default, said out loud): a request whose
                # client went away is still processed to the end, as Meta's would be.
                async with serving(
                    self.app(),
                    host=host,
                    port=port,
                    handler_cancellation=False,
                    shutdown_timeout=5.0,
                ) as bound:
                    try:
                        yield bound
                    finally:
                        # From now on every webhook is due at once; the requests still under
                        # way finish (and call back) while the server closes.
                        self.callbacks.start_flushing()
                until = asyncio.get_running_loop().time() + _FLUSH_CAP_S
                if shutdown is not None:
                    until = min(until, shutdown.unwind_end())
                await self.callbacks.flush(until)
            finally:
                calling_back.cancel()

    # -- the provider API --------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        self.stats["requests"] += 1
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            self.stats["unauthorized"] += 1
            return _error(401, "An active access token must be used", 190)
        if self.token_expired:
            self.stats["unauthorized"] += 1
            return _error(401, "Error validating access token: Session has expired", 190, 463)
        account = request.match_info["account"]
        try:
            body = orjson.loads(await request.read())
            recipient, text, callback = self._parse(body)
        except (orjson.JSONDecodeError, ValueError, AttributeError, TypeError, KeyError) as exc:
            self.stats["rejected"] += 1
            return _error(400, f"(#100) Invalid parameter: {exc}", 100)
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        now = time.monotonic()
        if self._rate is not None and not self._rate.allow(account, now):
            self.stats["throttled"] += 1
            return _error(
                self.settings.throttle_status,
                f"(#{self._throttle_code}) Rate limit hit",
                self._throttle_code,
                details="too many messages sent from this account in a short period of time",
            )
        if self._pairs is not None and not self._pairs.allow(f"{account}:{recipient}", now):
            self.stats["pair_throttled"] += 1
            return _error(
                400,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                131056,
                details="too many messages sent from this phone number to the same recipient",
            )
        if self.settings.error_rate and self._random.random() < self.settings.error_rate:
            self.stats["failed"] += 1
            code = self.settings.error_code or (131000 if self._whatsapp else 2)
            return _error(500, "simulated provider failure", code)
        if problem := self._refusal(recipient, text):
            self.stats["rejected"] += 1
            return problem
        accepted = self._accept(account, recipient, text, callback)
        if self._whatsapp:
            return web.json_response(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": recipient, "wa_id": recipient.lstrip("+")}],
                    "messages": [{"id": accepted.provider_message_id}],
                }
            )
        return web.json_response(
            {"recipient_id": recipient, "message_id": accepted.provider_message_id}
        )

    @property
    def _whatsapp(self) -> bool:
        return self.channel == "whatsapp"

    def _refusal(self, recipient: str, text: str) -> web.Response | None:
        """What Meta refuses for this message alone: an unknown recipient, a text too long."""
        if "invalid" in recipient:
            if self._whatsapp:
                return _error(400, f"(#131026) Message undeliverable to {recipient}", 131026)
            return _error(400, "(#100) No matching user found", 100, 2018001)
        if self._whatsapp and len(text) > TEXT_LIMIT_CHARACTERS:
            limit = f"at most {TEXT_LIMIT_CHARACTERS} characters"
            return _error(400, f"(#100) Param text['body'] must be {limit} long", 100)
        if not self._whatsapp and len(text.encode("utf-8")) > TEXT_LIMIT_BYTES:
            return _error(400, f"(#100) Text must be {TEXT_LIMIT_BYTES} bytes or fewer", 100)
        return None

    def _parse(self, body: Any) -> tuple[str, str, str | None]:
        if self.channel == "whatsapp":
            if body.get("messaging_product") != "whatsapp":
                raise ValueError("messaging_product must be whatsapp")
            recipient = str(body["to"])
            kind = body.get("type")
            if kind == "text":
                text = str(body["text"]["body"])
            elif kind == "template":
                text = str(body["template"]["name"])
            elif kind in ("image", "video", "audio", "document", "sticker"):
                text = str(body[kind]["link"])
            else:
                raise ValueError(f"unsupported message type {kind!r}")
            raw_callback = body.get("biz_opaque_callback_data")
        else:
            recipient = str(body["recipient"]["id"])
            message = body["message"]
            text = str(message.get("text") or message["attachment"]["payload"]["url"])
            raw_callback = message.get("metadata")
        if raw_callback is not None and not isinstance(raw_callback, str):
            raise TypeError("the callback data must be a string")
        return recipient, text, raw_callback

    def _accept(
        self, account: str, recipient: str, text: str, raw_callback: str | None
    ) -> Accepted:
        number = next(self._ids)
        prefix = "wamid.MOCK" if self.channel == "whatsapp" else "mid.MOCK"
        try:
            callback = orjson.loads(raw_callback) if raw_callback else {}
        except orjson.JSONDecodeError:
            callback = {}
        callback = callback if isinstance(callback, dict) else {}
        conversation = callback.get("conversation_id")
        accepted = Accepted(
            provider_message_id=f"{prefix}{number:012d}",
            message_id=str(callback["message_id"]) if callback.get("message_id") else None,
            conversation_id=conversation if isinstance(conversation, int) else None,
            recipient=recipient,
            text=text,
            accepted_at=time.time(),
        )
        self.accepted.append(accepted)
        self.stats["accepted"] += 1
        # Meta calls back for every message it accepted, ours or not (the webhooks role tells).
        self.callbacks.schedule(self._callbacks_for(account, accepted, raw_callback))
        return accepted

    def _callbacks_for(
        self, account: str, accepted: Accepted, raw_callback: str | None
    ) -> list[Stage]:
        """What Meta would send this app about a message it accepted."""
        provider_id, recipient = accepted.provider_message_id, accepted.recipient
        delivered_s = self.settings.delivered_after_ms / 1000
        read_s = max(self.settings.read_after_ms / 1000, delivered_s)
        if self._whatsapp:

            def whatsapp(name: str, after_s: float) -> Stage:
                def write(now_s: float) -> bytes:
                    item = whatsapp_status(
                        provider_id,
                        name,
                        at_s=int(now_s),
                        recipient_id=recipient.lstrip("+"),
                        callback_data=raw_callback,
                    )
                    notification = whatsapp_notification(phone_number_id=account, statuses=[item])
                    return orjson.dumps(notification)

                return Stage(after_s, write)

            return [
                whatsapp("sent", 0.0),
                whatsapp("delivered", delivered_s),
                whatsapp("read", read_s),
            ]

        def echo(now_s: float) -> bytes:
            event = instagram_echo(
                provider_id,
                customer=recipient,
                account_id=account,
                at_ms=int(now_s * 1000),
                metadata=raw_callback,
                text=accepted.text,
            )
            return orjson.dumps(instagram_notification(account_id=account, events=[event]))

        def read(now_s: float) -> bytes:
            event = instagram_read(
                provider_id, customer=recipient, account_id=account, at_ms=int(now_s * 1000)
            )
            return orjson.dumps(instagram_notification(account_id=account, events=[event]))

        return [Stage(0.0, echo), Stage(read_s, read)]

    async def _sent(self, _: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(a) for a in self.accepted]), content_type="application/json"
        )

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(
            {**self.stats, "token_expired": self.token_expired, "webhooks": self.callbacks.stats()}
        )

    async def _token(self, request: web.Request) -> web.Response:
        """`{"expired": true}` expires the access token (every send: 401, code 190); false
        restores it."""
        try:
            doc = orjson.loads(await request.read())
            expired = doc["expired"]
            if not isinstance(expired, bool):
                raise TypeError("expired must be true or false")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return web.json_response({"error": f'expected {{"expired": bool}}: {exc}'}, status=400)
        if expired != self.token_expired:
            log.warning(
                "mock %s: access token %s", self.channel, "expired" if expired else "restored"
            )
        self.token_expired = expired
        return web.json_response({"token_expired": expired})


def _error(
    status: int, message: str, code: int, subcode: int | None = None, *, details: str = ""
) -> web.Response:
    """Meta's error object, as the Graph API answers it."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if details:
        error["error_data"] = {"details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = f"MOCK{next(_traces):08d}"
    return web.json_response({"error": error}, status=status)


_traces = itertools.count(1)
