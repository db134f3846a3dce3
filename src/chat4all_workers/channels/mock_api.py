"""A local simulator of the WhatsApp Cloud API and the Instagram Messaging API, for development.

It answers the same HTTP shapes as the real services (`POST /{version}/{account}/messages` with a
bearer token), so the real adapters are what talk to it: an id on success, 400 for a recipient
containing "invalid", 429 with Retry-After above the rate limit, 500 at the configured error
rate, after the configured latency. Like the real webhooks, it later reports DELIVERED and READ
for each accepted message (through `emit`, which the mock role points at
`message_status_updates`), using the platform ids the adapters pass as opaque callback data.

`GET /__mock__/sent` lists what it accepted, and `GET /__mock__/stats` counts requests by
outcome, so a developer (or a test) can see exactly what was delivered and how often.
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

from chat4all_workers.config import MockSettings
from chat4all_workers.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

StatusEmitter = Callable[[dict[str, Any]], Awaitable[None]]

_MAX_REMEMBERED = 100_000  # accepted messages kept for /__mock__/sent
_MAX_EMITS_IN_FLIGHT = 256
_MAX_PENDING_STATUSES = 50_000  # DELIVERED/READ waiting to be emitted


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
        self.stats: dict[str, int] = {"accepted": 0, "rejected": 0, "rate_limited": 0, "failed": 0}
        self._window_start = time.monotonic()
        self._window_count = 0
        self._delivered: asyncio.Queue[_Due] = asyncio.Queue(_MAX_PENDING_STATUSES)
        self._read: asyncio.Queue[_Due] = asyncio.Queue(_MAX_PENDING_STATUSES)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{account}/messages", self._messages)
        app.router.add_get("/__mock__/sent", self._sent)
        app.router.add_get("/__mock__/stats", self._stats)
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
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return _error(401, "missing access token", 190)
        try:
            body = orjson.loads(await request.read())
            recipient, text, callback = self._parse(body)
        except (orjson.JSONDecodeError, ValueError, AttributeError, TypeError) as exc:
            return _error(400, f"invalid request: {exc}", 100)
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        if self._over_rate_limit():
            self.stats["rate_limited"] += 1
            return _error(429, "rate limit hit", 130429, headers={"Retry-After": "1"})
        if self.settings.error_rate and self._random.random() < self.settings.error_rate:
            self.stats["failed"] += 1
            return _error(500, "simulated provider failure", 1)
        if "invalid" in recipient:
            self.stats["rejected"] += 1
            return _error(400, f"recipient {recipient} is not a valid user", 131026)
        accepted = self._accept(recipient, text, callback)
        if self.channel == "whatsapp":
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

    def _over_rate_limit(self) -> bool:
        limit = self.settings.rate_limit_per_s
        if not limit:
            return False
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        return self._window_count > limit

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
        return web.json_response(self.stats)

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
    status: int, message: str, code: int, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "OAuthException", "code": code}},
        status=status,
        headers=headers,
    )
