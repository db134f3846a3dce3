"""`webhooks`: the HTTP endpoint Meta calls back with statuses and with users' messages.

`[webhooks] host:port` serves `/webhooks/whatsapp` and `/webhooks/instagram` (what Meta sends
and why the rules below are what they are: channels/meta_webhooks.py, with its sources):

- `GET` is Meta's verification: `hub.mode=subscribe` with the channel's verify token (compared
  in constant time) is answered 200 with `hub.challenge` as text/plain; anything else 403.
- `POST` is a notification. The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body
  with the channel's app secret) is checked in constant time before anything is parsed: missing
  or wrong, 401 and nothing produced. A body over `max_body_bytes` is 413 without being read
  past the limit; one slower to arrive than `body_timeout_s` 408; a content type other than JSON
  415; a channel without an app secret 403 (the role says so at start-up). More than
  `max_concurrent_requests` in progress: 503 at once.
- What a signed body carries becomes records: each status of one of our messages a
  `message_status_updates` record (docs/contract.md section 3; the message found through the
  callback data our send set, or for an Instagram read receipt through `ProviderIndex`), each
  user's message an `inbound_messages` record. Events that are not ours or not tracked are
  counted by reason and ignored. A signed body that violates the format is answered 200 with
  its raw bytes dead-lettered (`dlq.source=webhooks`, `dlq.error_type=invalid_record`, the
  reason naming what is wrong): Meta would otherwise retry it for days, and it would never get
  better. What the rest of such a body carries is still produced.
- 200 only once Kafka acknowledged every record of the request, or, while the Kafka breaker is
  open, once they are parked in the Redis fallback list (the backfill role replays them). Any
  other failure to store them (a send that failed, Redis unreachable) is 503, so that Meta's own
  retries cover our outage; a request waits for Kafka at most `[webhooks] store_timeout_s`,
  then answers 503 and leaves its records with the producer (which owns their fate and still
  delivers them: the copy Meta sends again is a harmless duplicate).
  Meta's retries and duplicates are harmless: a status is idempotent (one history row per
  message, channel and status), and `inbound_messages` consumers deduplicate by provider id.

Each verified status passes `record_verdicts` before it is produced: the provider's word for
(message, channel) goes into the router's dedup marker (roles/dedup.py), so that a send whose
outcome the router could not know (a worker killed mid-send, a timeout after the request was
written) is settled without a second send. A request whose verdicts cannot be recorded (Redis
unreachable) is answered 503 like one that cannot be stored: Meta's retry brings them again.

On stop the role turns unready at once but keeps answering while POSTs keep coming (until none
came for `_QUIET_S` since the stop, or the shutdown deadline's drain end): a load balancer needs
a moment to notice, and a channel mock in the same process flushes its pending webhooks then.

Why aiohttp's server and not one of our own on httptools (as channels/http.py is for the client):
measured with bench/webhooks.py's load generator, a status posted alone costs this process about
0.17-0.19 ms of CPU; aiohttp's request handling is 0.062-0.067 ms of it (a trivial handler under
the same load), Kafka's produce 0.046 ms, the signature, JSON and parsing 0.02 ms. A minimal
httptools server answered the same load at 0.029 ms: a fifth of the CPU saved, not the factor
that would change how the role is deployed (it scales out, being stateless), and not worth an
internet-facing HTTP parser of our own (request smuggling, slow senders, limits). (Phase 2: the
records of concurrent requests are produced in one call per loop iteration, kafka/coalescing.py,
which more than pays for the provider's word recorded in Redis: 0.21 ms per status, against 0.29
without the coalescing and 0.26 before either, in one bench/webhooks.py session.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from chat4all_workers.config import CHANNELS, NON_EMPTY, Settings
from chat4all_workers.deadline import ShutdownDeadline, timeout_at
from chat4all_workers.delivery.markers import ProviderVerdicts, marker_key
from chat4all_workers.delivery.provider_index import MessageRef, ProviderIndex
from chat4all_workers.errors import CircuitOpenError, PermanentError, RetryableError
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.producer import Delivery, OutgoingRecord
from chat4all_workers.meta.events import InboundEvent, Parsed, StatusEvent, parse_body
from chat4all_workers.meta.instagram_webhooks import parse_instagram
from chat4all_workers.meta.signature import SIGNATURE_HEADER, challenge_answer, signature_matches
from chat4all_workers.meta.whatsapp_webhooks import parse_whatsapp
from chat4all_workers.observability.metrics import total
from chat4all_workers.resources import TRANSIENT_ERRORS, Need
from chat4all_workers.role import RoleContext, RoleReport, RoleSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """`[webhooks]`: the HTTP endpoint Meta calls back (the apps' secrets and verify tokens are
    the channel sections': `whatsapp.app_secret`, ...)."""

    SECTION: ClassVar[str] = "webhooks"

    host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    port: int = field(default=8200, metadata={"min": 0, "max": 65535})  # 0: any free port
    max_body_bytes: int = 1024 * 1024
    # POSTs in progress at once (bodies in memory); above it, 503 at once and Meta retries.
    max_concurrent_requests: int = 1000
    # A POST whose body takes longer to arrive is answered 408: slow senders cannot hold the slots.
    body_timeout_s: float = 10.0
    # How long a POST waits for Kafka to acknowledge its records before it answers 503 (Meta
    # retries; the records stay with the producer, which still delivers them: a status is
    # idempotent). Below Meta's own time-out for a webhook.
    store_timeout_s: float = 5.0


_JSON = "application/json"
_MAX_REASON_PROBLEMS = 5
# What keeps a notification from being stored now: answered 503, Meta sends it again later.
_CANNOT_STORE: tuple[type[Exception], ...] = (RetryableError, *TRANSIENT_ERRORS)
_LINGER_S = 2.0
_QUIET_S = 0.5  # stopping: the listener closes once no POST came for this long
_WARN_EVERY_S = 60.0  # rejected requests are logged at most once a minute per channel and kind
# Request outcomes answered 200 (the notification is stored: produced, parked or dead-lettered);
# the verification GETs are not notifications.
_STORED = ("accepted", "parked", "invalid")
_VERIFICATION = ("verify_ok", "verify_refused")


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = _JSON
    close: bool = False  # the request body was not read: do not keep the connection


def _error(status: int, text: str, *, close: bool = False) -> Answer:
    return Answer(status, orjson.dumps({"error": text}), close=close)


class Webhooks:
    """What the endpoint does, apart from the HTTP framing (`_app` below)."""

    def __init__(self, ctx: RoleContext) -> None:
        settings = ctx.settings
        self._ctx = ctx
        self._settings = settings.section(WebhookSettings)
        self._topics = settings.topics
        self._producer = ctx.resources.kafka()
        self._store_timeout_s = self._settings.store_timeout_s
        # A request that stops waiting (503) leaves its records with the producer.
        self._coalescer = ProduceCoalescer(self._producer)
        self._metrics = ctx.metrics
        self._index = ProviderIndex(
            ctx.resources.redis_client(),
            key=ctx.resources.redis_key,
            ttl_s=settings.delivery.provider_index_ttl_s,
        )
        self._verdicts = ProviderVerdicts(
            ctx.resources.redis_client(), ttl_s=settings.delivery.dedup_ttl_s
        )
        self._secrets = {
            channel: getattr(settings, channel).app_secret.get() for channel in CHANNELS
        }
        self._tokens = {
            channel: getattr(settings, channel).verify_token.get() for channel in CHANNELS
        }
        phone, ig_user = settings.whatsapp.phone_number_id, settings.instagram.user_id
        self._parsers: dict[str, Callable[[Any], Parsed]] = {
            "whatsapp": lambda doc: parse_whatsapp(doc, phone_number_id=phone),
            "instagram": lambda doc: parse_instagram(doc, user_id=ig_user),
        }
        self.in_flight = 0
        self.last_request_at = 0.0  # loop time of the last POST's start
        self.requests: Counter[tuple[str, str]] = Counter()
        self._warned_at: dict[tuple[str, str], float] = {}
        self._unwarned: Counter[tuple[str, str]] = Counter()

    def accepting(self) -> dict[str, bool]:
        """Channels whose POSTs are taken (those with an app secret)."""
        return {channel: bool(self._secrets[channel]) for channel in CHANNELS}

    def stats(self) -> dict[str, Any]:
        return {
            "accepting": self.accepting(),
            "in_flight": self.in_flight,
            "requests": {f"{c}:{o}": n for (c, o), n in sorted(self.requests.items())},
        }

    def report(self, listening: str) -> RoleReport:
        """Notifications (POSTs) answered so far, accepted (stored: 200) and refused (4xx,
        503), from `webhook_requests_total`; the address it listens on."""
        requests = self._metrics.webhook_requests
        by_outcome = {outcome: total(requests, outcome=outcome) for outcome in _STORED}
        posts = total(requests) - sum(total(requests, outcome=o) for o in _VERIFICATION)
        accepted = sum(by_outcome.values())
        return RoleReport(
            processed_total=posts,
            counts={"accepted": accepted, "refused": posts - accepted},
            state={"listening": listening, "in_flight": self.in_flight},
        )

    # -- GET ------------------------------------------------------------------------------------

    def verify(self, channel: str, query: Mapping[str, str]) -> Answer:
        challenge = challenge_answer(query, self._tokens[channel])
        if challenge is None:
            self._count(channel, "verify_refused")
            self._warn(channel, "verify_refused", "verification GET refused (wrong token or mode)")
            return Answer(403, b"forbidden", "text/plain")
        self._count(channel, "verify_ok")
        log.info("webhooks: %s verification request answered", channel)
        return Answer(200, challenge.encode(), "text/plain")

    # -- POST -----------------------------------------------------------------------------------

    def refuse_early(self, channel: str, content_length: int | None) -> Answer | None:
        """The answer to a POST that is not to be read at all, or None to read it."""
        if not self._secrets[channel]:
            self._count(channel, "refused")
            return _error(403, f"{channel} webhooks are not configured", close=True)
        if content_length is not None and content_length > self._settings.max_body_bytes:
            return self.too_large(channel)
        if self.in_flight >= self._settings.max_concurrent_requests:
            self._count(channel, "overloaded")
            self._warn(channel, "overloaded", "POST answered 503: too many in progress")
            return _error(503, "overloaded, try again", close=True)
        return None

    def too_slow(self, channel: str) -> Answer:
        self._count(channel, "timeout")
        self._warn(
            channel, "timeout", "POST refused (408): body slower than webhooks.body_timeout_s"
        )
        return _error(408, "the body took too long", close=True)

    def too_large(self, channel: str) -> Answer:
        self._count(channel, "too_large")
        self._warn(channel, "too_large", "POST refused (413): body over webhooks.max_body_bytes")
        return _error(413, f"body over {self._settings.max_body_bytes} bytes", close=True)

    async def receive(
        self, channel: str, body: bytes, signature: str | None, content_type: str
    ) -> Answer:
        if not signature_matches(self._secrets[channel], body, signature):
            self._count(channel, "bad_signature")
            self._warn(
                channel, "bad_signature", f"POST refused (401): missing or wrong {SIGNATURE_HEADER}"
            )
            return _error(401, "missing or wrong signature")
        if content_type != _JSON:
            self._count(channel, "unsupported_media_type")
            return _error(415, f"content type must be {_JSON}")
        doc, problem = parse_body(body)
        parsed = Parsed(problems=[problem]) if problem else self._parsers[channel](doc)
        try:
            outcome, summary = await self._store(channel, body, parsed)
        except _CANNOT_STORE as exc:
            self._count(channel, "unavailable")
            self._warn(channel, "unavailable", f"POST answered 503, not stored: {exc}")
            return _error(503, "could not store the notification, try again")
        self._count(channel, outcome)
        return Answer(200, orjson.dumps(summary))

    async def _store(self, channel: str, body: bytes, parsed: Parsed) -> tuple[str, dict[str, Any]]:
        """Produce what `parsed` carries (and dead-letter the body if it has problems);
        (request outcome, summary). Raises RetryableError or an outage's error if it cannot."""
        statuses = await self._with_our_ids(channel, parsed)
        await self.record_verdicts(statuses)
        records = [self._status_record(s) for s in statuses]
        records += [self._inbound_record(m) for m in parsed.inbound]
        problems, error_type = list(parsed.problems), "invalid_record"
        parked = False
        try:
            parked = await self._deliver(records)
        except PermanentError as exc:  # Kafka refused a record (its size): nothing retries that
            problems.append(f"kafka refused its records: {exc}")
            error_type = "kafka_refused"
        else:
            self._count_events(channel, statuses, parsed.inbound)
        if problems:
            await self._dead_letter(channel, body, problems, error_type)
        for kind, reason in parsed.ignored:
            self._metrics.webhook_events.inc({"channel": channel, "kind": kind, "outcome": reason})
        for text in parsed.provider_errors:
            log.warning("webhooks: the provider reported an error: %s", text)
        summary = {
            "statuses": len(statuses),
            "inbound": len(parsed.inbound),
            "ignored": len(parsed.ignored),
            "dead_lettered": bool(problems),
            "parked": parked,
        }
        outcome = "invalid" if problems else "parked" if parked else "accepted"
        return outcome, summary

    async def _with_our_ids(self, channel: str, parsed: Parsed) -> list[StatusEvent]:
        """Every status with our message's ids; a read receipt's are looked up (and an unknown
        one is ignored), an echo's are remembered for the receipts to come."""
        unknown = [s.provider_message_id for s in parsed.statuses if s.message_id is None]
        found = await self._index.lookup(channel, unknown) if unknown else {}
        statuses, echoes = [], []
        for status in parsed.statuses:
            if status.message_id is None:
                ref = found.get(status.provider_message_id)
                if ref is None:
                    parsed.ignored.append((status.kind, "unknown_message"))
                    continue
                status = dataclasses.replace(
                    status, message_id=ref.message_id, conversation_id=ref.conversation_id
                )
            elif status.kind == "echo" and status.conversation_id is not None:
                echoes.append(
                    (
                        status.provider_message_id,
                        MessageRef(status.message_id, status.conversation_id),
                    )
                )
            statuses.append(status)
        await self._index.remember(channel, echoes)
        return statuses

    async def record_verdicts(self, statuses: Sequence[StatusEvent]) -> None:
        """Every verified status of a request passes here, our ids known, before it is produced.

        For (message, channel), any status from the provider (sent, delivered, read, failed; an
        Instagram echo or read receipt) means it accepted the send: the dedup marker
        `message:dedup:{message_id}:{channel}` becomes `sent:{provider_message_id}` unless it
        already is (one script per marker, one round trip per request), settling a send whose
        outcome the router could not know. Counted by what the marker held.
        """
        entries: dict[str, tuple[str, str]] = {}
        for status in statuses:
            if status.message_id is None:
                continue
            key = self._ctx.resources.redis_key(marker_key(status.message_id, status.channel))
            entries.setdefault(key, (status.channel, status.provider_message_id))
        if not entries:
            return
        found = await self._verdicts.record([(k, p) for k, (_, p) in entries.items()])
        for (channel, _), marker in zip(entries.values(), found, strict=True):
            self._metrics.webhook_verdicts.inc({"channel": channel, "marker": marker})

    async def _deliver(self, records: list[OutgoingRecord]) -> bool:
        """Produce and await the acks; True when parked instead (the breaker is open)."""
        if not records:
            return False
        # With the records of the other requests of this loop iteration, in one call.
        sending = self._coalescer.send_each(records)
        try:
            async with asyncio.timeout(self._store_timeout_s):
                outcomes = await sending
        except TimeoutError:
            # Not abandoned: the producer keeps the records and delivers them (its verdict is
            # final); the answer says only that they are not stored yet.
            raise RetryableError(
                f"kafka did not acknowledge within {self._store_timeout_s}s"
            ) from None
        except CircuitOpenError:
            deliveries = await self._producer.send_many(records, fallback=True)
            return any(d.parked for d in deliveries)
        for outcome in outcomes:
            if not isinstance(outcome, Delivery):
                raise outcome  # the first failure, in record order (as send_many raises it)
        return False

    async def _dead_letter(
        self, channel: str, body: bytes, problems: list[str], error_type: str
    ) -> None:
        shown = "; ".join(problems[:_MAX_REASON_PROBLEMS])
        more = len(problems) - _MAX_REASON_PROBLEMS
        reason = f"{channel}: {shown}" + (f" (and {more} more)" if more > 0 else "")
        log.warning(
            "webhooks: dead-lettering a %d-byte %s notification: %s", len(body), channel, reason
        )
        await dead_letter(
            self._producer,
            dlq_topic=self._topics.dlq,
            value=body,
            key=f"webhook:{channel}".encode(),
            source="webhooks",
            reason=reason,
            error_type=error_type,
            attempts=1,
            # Not replayable: a provider's notification belongs to no topic of ours.
            original_topic="",
        )
        self._metrics.dlq_messages.inc({"source": "webhooks", "reason": error_type})

    # -- records --------------------------------------------------------------------------------

    def _status_record(self, status: StatusEvent) -> OutgoingRecord:
        details: dict[str, Any] = {"provider_message_id": status.provider_message_id}
        if status.error is not None:
            error = status.error
            code = f"({error.code}) " if error.code is not None else ""
            text = ": ".join(t for t in (error.title, error.details) if t) or "no reason given"
            details["reason"] = f"{status.channel}: {code}{text}"
            if error.code is not None:
                details["provider_code"] = error.code
            if error.title:
                details["title"] = error.title
        value = {
            "message_id": status.message_id,
            "conversation_id": status.conversation_id,
            "channel": status.channel,
            "new_status": status.status,
            "timestamp": status.at.isoformat(),
            "details": details,
        }
        key = f"conversation:{status.conversation_id}".encode()
        return OutgoingRecord(self._topics.message_status_updates, orjson.dumps(value), key)

    def _inbound_record(self, message: InboundEvent) -> OutgoingRecord:
        value = {
            "channel": message.channel,
            "provider_message_id": message.provider_message_id,
            "account_id": message.account_id,
            "entry_id": message.entry_id,
            "sender": message.sender,
            "sender_name": message.sender_name,
            "timestamp": message.at.isoformat(),
            "received_at": datetime.now(UTC).isoformat(),
            "type": message.type,
            "text": message.text,
            "attachments": list(message.attachments),
            "reply_to": message.reply_to,
            "content": message.content,
        }
        key = f"{message.channel}:{message.sender}".encode()
        return OutgoingRecord(self._topics.inbound_messages, orjson.dumps(value), key)

    # -- accounting -----------------------------------------------------------------------------

    def _count(self, channel: str, outcome: str) -> None:
        self.requests[channel, outcome] += 1
        self._metrics.webhook_requests.inc({"channel": channel, "outcome": outcome})

    def _count_events(
        self, channel: str, statuses: Sequence[StatusEvent], inbound: Sequence[InboundEvent]
    ) -> None:
        now = time.time()
        lag = {"channel": channel}
        for status in statuses:
            self._metrics.webhook_events.inc(
                {"channel": channel, "kind": status.kind, "outcome": "produced"}
            )
            self._metrics.webhook_lag.observe(lag, max(0.0, now - status.at.timestamp()))
        for message in inbound:
            self._metrics.webhook_events.inc(
                {"channel": channel, "kind": "inbound", "outcome": "produced"}
            )
            self._metrics.webhook_lag.observe(lag, max(0.0, now - message.at.timestamp()))

    def _warn(self, channel: str, kind: str, text: str) -> None:
        """A WARNING for a rejected request, at most once a minute per channel and kind, with
        how many there were since the last one: a flood must not flood the log."""
        key = (channel, kind)
        self._unwarned[key] += 1
        now = time.monotonic()
        last = self._warned_at.get(key)
        if last is None or now - last >= _WARN_EVERY_S:
            count = self._unwarned.pop(key)
            self._warned_at[key] = now
            since = f"{count} such in the last {now - last:.0f} s" if last is not None else "first"
            log.warning(
                "webhooks: %s: %s (%s; at most one such line a minute)", channel, text, since
            )


# -- HTTP -----------------------------------------------------------------------------------------


def _response(answer: Answer) -> web.Response:
    response = web.Response(
        body=answer.body, status=answer.status, content_type=answer.content_type
    )
    if answer.close:
        response.force_close()
    return response


def _app(service: Webhooks, *, max_body_bytes: int, body_timeout_s: float) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    for channel in CHANNELS:

        async def get(request: web.Request, channel: str = channel) -> web.Response:
            return _response(service.verify(channel, request.query))

        async def post(request: web.Request, channel: str = channel) -> web.Response:
            early = service.refuse_early(channel, request.content_length)
            if early is not None:
                return _response(early)
            service.in_flight += 1  # from the first byte read: bodies are what fills memory
            service.last_request_at = asyncio.get_running_loop().time()
            try:
                try:
                    # A slow sender must not hold its slot: Meta sends a body at once.
                    async with asyncio.timeout(body_timeout_s):
                        body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    return _response(service.too_large(channel))
                except TimeoutError:
                    return _response(service.too_slow(channel))
                signature = request.headers.get(SIGNATURE_HEADER)
                answer = await service.receive(channel, body, signature, request.content_type)
            finally:
                service.in_flight -= 1
            return _response(answer)

        app.router.add_get(f"/webhooks/{channel}", get, allow_head=False)
        app.router.add_post(f"/webhooks/{channel}", post)
    return app


def _warn_unconfigured(settings: Settings) -> None:
    missing = [
        f"{channel} ({channel}.app_secret, env {settings.env_of(f'{channel}.app_secret')})"
        for channel in CHANNELS
        if not getattr(settings, channel).app_secret
    ]
    if missing:
        log.warning("webhooks: POSTs refused (403) for %s: no app secret set", ", ".join(missing))


async def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    service = Webhooks(ctx)
    _warn_unconfigured(settings)
    # An in-flight request waits for Kafka at most store_timeout_s; let it finish.
    own = settings.section(WebhookSettings)
    grace_s = min(own.store_timeout_s + 1.0, settings.supervisor.shutdown_timeout_s)
    runner = web.AppRunner(
        _app(
            service,
            max_body_bytes=own.max_body_bytes,
            body_timeout_s=own.body_timeout_s,
        ),
        access_log=None,
        shutdown_timeout=grace_s,
        # A body left unread (413, 408, 503): after the answer, what still arrives is discarded,
        # never kept, for at most this long (aiohttp's default is 10 s), so that a sender still
        # writing reads the answer rather than a reset; then the connection is closed.
        lingering_time=_LINGER_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, own.host, own.port, backlog=1024)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        host, port = sockets[0].getsockname()[:2] if sockets else (site.name, 0)
        listening = f"{host}:{port}"
        ctx.publish("webhooks", lambda: {"listening": listening, **service.stats()})
        ctx.report(lambda: service.report(listening))
        log.info("webhooks: listening on http://%s/webhooks/{%s}", listening, ",".join(CHANNELS))
        ctx.mark_ready()
        await ctx.stopping.wait()
        ctx.mark_unready()
        await _until_quiet(service, ctx.shutdown)
    finally:
        ctx.mark_unready()
        await runner.cleanup()


async def _until_quiet(service: Webhooks, deadline: ShutdownDeadline) -> None:
    """Stopping: keep answering while POSTs come (a load balancer still sending, a mock in
    this process flushing its webhooks), until none came for `_QUIET_S` or the drain end."""
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    with contextlib.suppress(TimeoutError):
        async with timeout_at(deadline.drain_end()):
            while True:
                quiet_for = loop.time() - max(stopped_at, service.last_request_at)
                if quiet_for >= _QUIET_S and not service.in_flight:
                    return
                await asyncio.sleep(max(0.05, _QUIET_S - quiet_for))


ROLE = RoleSpec(
    name="webhooks",
    needs=frozenset({Need.KAFKA, Need.REDIS}),
    run=run,
    settings=WebhookSettings,
)
