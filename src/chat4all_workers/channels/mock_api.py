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

Like the real webhooks, it later reports DELIVERED and READ for each accepted message (through
`emit`, which the mock role points at `message_status_updates`), using the platform ids the
adapters pass as opaque callback data.

`GET /__mock__/sent` lists what it accepted, and `GET /__mock__/stats` counts requests by
outcome (accepted, throttled, pair_throttled, unauthorized, rejected, failed), so a developer
(or a test) can see exactly what was delivered and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from chat4all_workers.channels.instagram import TEXT_LIMIT_BYTES
from chat4all_workers.channels.whatsapp import TEXT_LIMIT_CHARACTERS
from chat4all_workers.config import MockSettings
from chat4all_workers.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

StatusEmitter = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_REMEMBERED = 100_000  # accepted messages kept for /__mock__/sent
_MAX_EMITS_IN_FLIGHT = 256
_MAX_PENDING_STATUSES = 50_000  # DELIVERED/READ waiting to be emitted
_MAX_PAIRS = 100_000  # (account, recipient) pair states kept before the expired are dropped


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


@dataclass(frozen=True)
class _Due:
    at: float
    accepted: Accepted
    status: str


class MockChannel:
    def __init__(
        self, channel: str, settings: MockSettings, emit: StatusEmitter, *, seed: int | None = None
    ) -> None:
        self.channel = channel
        self.settings = settings
        self._emit = emit
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
        self._delivered: asyncio.Queue[_Due] = asyncio.Queue(_MAX_PENDING_STATUSES)
        self._read: asyncio.Queue[_Due] = asyncio.Queue(_MAX_PENDING_STATUSES)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        app.router.add_get("/__mock__/sent", self._sent)
        app.router.add_get("/__mock__/stats", self._stats)
        app.router.add_post("/__mock__/token", self._token)
        return app

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[int]:
        """Serve on host:port and emit statuses until the block ends; yields the bound port."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            sockets = getattr(site._server, "sockets", None) or []
            bound = int(sockets[0].getsockname()[1]) if sockets else port
            async with asyncio.TaskGroup() as tasks:
                emitters = [
                    tasks.create_task(self._emit_when_due(self._delivered, self._read)),
                    tasks.create_task(self._emit_when_due(self._read, None)),
                ]
                try:
                    yield bound
                finally:
                    for task in emitters:
                        task.cancel()
        finally:
            await runner.cleanup()

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
            return _error(500, "simulated provider failure", 131000 if self._whatsapp else 2)
        if problem := self._refusal(recipient, text):
            self.stats["rejected"] += 1
            return problem
        accepted = self._accept(recipient, text, callback)
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

    def _parse(self, body: Any) -> tuple[str, str, dict[str, Any]]:
        if self.channel == "whatsapp":
            if body.get("messaging_product") != "whatsapp":
                raise ValueError("messaging_product must be whatsapp")
            recipient = str(body["to"])
            if body.get("type") == "document":
                text = str(body["document"]["link"])
            else:
                text = str(body["text"]["body"])
            raw_callback = body.get("biz_opaque_callback_data")
        else:
            recipient = str(body["recipient"]["id"])
            message = body["message"]
            text = str(message.get("text") or message["attachment"]["payload"]["url"])
            raw_callback = message.get("metadata")
        callback = orjson.loads(raw_callback) if raw_callback else {}
        return recipient, text, callback if isinstance(callback, dict) else {}

    def _accept(self, recipient: str, text: str, callback: dict[str, Any]) -> Accepted:
        number = next(self._ids)
        prefix = "wamid.MOCK" if self.channel == "whatsapp" else "mid.MOCK"
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
        if accepted.message_id is not None and accepted.conversation_id is not None:
            due = time.monotonic() + self.settings.delivered_after_ms / 1000
            try:
                self._delivered.put_nowait(_Due(due, accepted, "DELIVERED"))
            except asyncio.QueueFull:
                log.warning("mock %s: too many pending status updates; dropping one", self.channel)
        return accepted

    async def _sent(self, _: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(a) for a in self.accepted]), content_type="application/json"
        )

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({**self.stats, "token_expired": self.token_expired})

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

    # -- the webhooks ------------------------------------------------------------------------

    async def _emit_when_due(
        self, queue: asyncio.Queue[_Due], then: asyncio.Queue[_Due] | None
    ) -> None:
        """Emit each status when due; the delays are fixed, so queue order is due order.

        Emits run concurrently (bounded): one at a time, each waiting for Kafka's ack, capped
        the mock near 140 statuses/s and made DELIVERED seconds late under load.
        """
        slots = asyncio.Semaphore(_MAX_EMITS_IN_FLIGHT)
        async with asyncio.TaskGroup() as emits:
            while True:
                item = await queue.get()
                delay = item.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                emits.create_task(self._emit_one(item, then, slots))

    async def _emit_one(
        self, item: _Due, then: asyncio.Queue[_Due] | None, slots: asyncio.Semaphore
    ) -> None:
        try:
            update = {
                "message_id": item.accepted.message_id,
                "conversation_id": item.accepted.conversation_id,
                "channel": self.channel,
                "new_status": item.status,
                "timestamp": datetime.now(UTC).isoformat(),
                "details": {"provider_message_id": item.accepted.provider_message_id},
            }
            try:
                await self._emit(update)
            except (RetryableError, PermanentError) as exc:
                log.warning("mock %s: could not emit %s: %s", self.channel, item.status, exc)
            if then is not None:  # READ only after its DELIVERED went out
                due = (
                    item.at
                    + (self.settings.read_after_ms - self.settings.delivered_after_ms) / 1000
                )
                with contextlib.suppress(asyncio.QueueFull):
                    then.put_nowait(_Due(due, item.accepted, "READ"))
        finally:
            slots.release()


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
