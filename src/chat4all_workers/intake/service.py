"""One webhook request, from its signature to its answer (the HTTP framing is intake/server.py).

- `GET` is Meta's verification: `hub.mode=subscribe` with a known app's verify token (the
  path's app, or any; compared in constant time) is answered 200 with `hub.challenge` as
  text/plain; anything else 403.
- `POST` is a notification. With no app secret at all (no app configured) it is 403 (the role
  says so at start-up); a body over `max_body_bytes` 413 without being read past the limit; more
  than `max_concurrent_requests` in progress 503 at once; one slower to arrive than
  `body_timeout_s` 408. The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with
  the app's secret: intake/trust.py) is checked in constant time before anything is parsed:
  missing or no app's, 401 and nothing produced; a content type other than JSON 415. Then the
  body is parsed (meta/) keeping only what the signing app's accounts received, our ids found
  and the provider's word recorded (intake/provider_word.py), and what it carries stored
  (intake/storing.py): 200 once stored, 503 when it cannot be (Meta retries).

The common notification, statuses of our own sends and nothing else (no failure, no echo, no
read receipt to look up, no user's message, no problem), is stored together with the others of
its event-loop iteration, in one task (`_store_batch`): their verdicts in one call, then their
records in one call, the contract's order kept (every verdict before any record), and each
request's answer set on its future, which its connection writes from a callback. Why: stored
in its connection's task, a request woke that task three times (for the request, for the Redis
verdict, for Kafka's ack), about 6 us each through the coroutine chain; the batch's task wakes
twice for all of them. Measured with bench/webhooks.py (one status per POST, 32 and 64
connections, in turns with the floor, 2026-12-07), the role's CPU per status went from 1.41-1.71x
the floor's to 1.27-1.49x (a floor whose verdicts went through redis-py's Pipeline, since made
as cheap as the role's own path: bench/webhook_floor.py). Any other notification takes the
general path (`_store`) in its connection's task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from chat4all_workers.accounts.model import Directory
from chat4all_workers.background import Spawn
from chat4all_workers.batching import IterationBatcher
from chat4all_workers.config import CHANNELS, Settings
from chat4all_workers.delivery.windows import Windows
from chat4all_workers.errors import PermanentError, RetryableError
from chat4all_workers.formats.inbound import inbound_record
from chat4all_workers.formats.status_update import status_record
from chat4all_workers.intake.accounting import Accounting
from chat4all_workers.intake.answers import JSON, Answer, error
from chat4all_workers.intake.failures import Failures
from chat4all_workers.intake.provider_word import ProviderWord
from chat4all_workers.intake.storing import Storing
from chat4all_workers.intake.trust import Trust
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.meta.events import Parsed, StatusEvent, parse_body
from chat4all_workers.meta.instagram_webhooks import parse_instagram
from chat4all_workers.meta.signature import SIGNATURE_HEADER
from chat4all_workers.meta.whatsapp_webhooks import parse_whatsapp
from chat4all_workers.resources import TRANSIENT_ERRORS

log = logging.getLogger(__name__)

# What keeps a notification from being stored now: answered 503, Meta sends it again later.
_CANNOT_STORE: tuple[type[Exception], ...] = (RetryableError, *TRANSIENT_ERRORS)


class Webhooks:
    def __init__(
        self,
        settings: Settings,
        *,
        directory: Directory,
        max_body_bytes: int,
        max_concurrent_requests: int,
        word: ProviderWord,
        failures: Failures,
        windows: Windows,
        storing: Storing,
        accounting: Accounting,
        spawn: Spawn,
    ) -> None:
        """`spawn` owns the task each batch of common notifications is stored in."""
        self._topics = settings.topics
        self._max_body_bytes = max_body_bytes
        self._max_concurrent = max_concurrent_requests
        self._word = word
        self._failures = failures
        self._windows = windows
        self._storing = storing
        self.accounting = accounting
        self.trust = Trust(directory)
        self._directory = directory
        self._parsers: dict[str, Callable[..., Parsed]] = {
            "whatsapp": parse_whatsapp,
            "instagram": parse_instagram,
        }
        self._batcher = IterationBatcher(self._store_batch, spawn=spawn)

    def accepting(self) -> dict[str, bool]:
        """Channels whose POSTs are taken (some app with a secret may sign them)."""
        return {channel: bool(self.trust.candidates(channel, None)) for channel in CHANNELS}

    def stats(self) -> dict[str, Any]:
        return {"accepting": self.accepting(), **self.accounting.stats()}

    # -- GET ------------------------------------------------------------------------------------

    def verify(self, channel: str, query: Mapping[str, str], app_id: str | None = None) -> Answer:
        challenge = self.trust.challenge(channel, app_id, query)
        if challenge is None:
            text = "verification GET refused (wrong token or mode)"
            self.accounting.refused(channel, "verify_refused", text)
            return Answer(403, b"forbidden", "text/plain")
        self.accounting.count(channel, "verify_ok")
        log.info("webhooks: %s verification request answered", channel)
        return Answer(200, challenge.encode(), "text/plain")

    # -- POST -----------------------------------------------------------------------------------

    def refuse_early(
        self, channel: str, content_length: int | None, app_id: str | None = None
    ) -> Answer | None:
        """The answer to a POST that is not to be read at all, or None to read it."""
        if not self.trust.candidates(channel, app_id):
            self.accounting.count(channel, "refused")
            what = f"app {app_id!r}" if app_id is not None else f"{channel} webhooks"
            return error(403, f"{what} not configured (no app secret)", close=True)
        if content_length is not None and content_length > self._max_body_bytes:
            return self.too_large(channel)
        if self.accounting.in_flight >= self._max_concurrent:
            self.accounting.refused(channel, "overloaded", "POST answered 503: too many at once")
            return error(503, "overloaded, try again", close=True)
        return None

    def too_slow(self, channel: str) -> Answer:
        text = "POST refused (408): body slower than webhooks.body_timeout_s"
        self.accounting.refused(channel, "timeout", text)
        return error(408, "the body took too long", close=True)

    def too_large(self, channel: str) -> Answer:
        text = "POST refused (413): body over webhooks.max_body_bytes"
        self.accounting.refused(channel, "too_large", text)
        return error(413, f"body over {self._max_body_bytes} bytes", close=True)

    def receive(
        self,
        channel: str,
        body: bytes,
        signature: str | None,
        content_type: str,
        app_id: str | None = None,
    ) -> Answer | Awaitable[Answer]:
        """The answer to a POST's body: at once when it is refused; a future when it joins this
        loop iteration's batch (the common notification); otherwise a coroutine."""
        signers = self.trust.signers(channel, app_id, body, signature)
        if not signers:
            text = f"POST refused (401): missing or wrong {SIGNATURE_HEADER}"
            self.accounting.refused(channel, "bad_signature", text)
            return error(401, "missing or wrong signature")
        if content_type != JSON:
            self.accounting.count(channel, "unsupported_media_type")
            return error(415, f"content type must be {JSON}")
        doc, problem = parse_body(body)
        if problem:
            parsed = Parsed(problems=[problem])
        else:
            parsed = self._parsers[channel](doc, ours=self.trust.ours(channel, signers))
        if _common(parsed):
            answer: asyncio.Future[Answer] = self._batcher.future()
            self._batcher.add(_Common(channel, body, parsed, answer))
            return answer
        return self._receive(channel, body, parsed)

    async def _receive(self, channel: str, body: bytes, parsed: Parsed) -> Answer:
        try:
            return await self._store(channel, body, parsed)
        except _CANNOT_STORE as exc:
            return self._unavailable(channel, exc)

    def _unavailable(self, channel: str, exc: Exception) -> Answer:
        self.accounting.refused(channel, "unavailable", f"POST answered 503, not stored: {exc}")
        return error(503, "could not store the notification, try again")

    async def _store(self, channel: str, body: bytes, parsed: Parsed) -> Answer:
        """Produce what `parsed` carries (and dead-letter the body if it has problems); the
        answer. Raises RetryableError or an outage's error if it cannot."""
        statuses = await self._word.statuses(channel, parsed)
        failed = [s for s in statuses if s.status == "FAILED"]
        went = [s for s in statuses if s.status != "FAILED"] if failed else statuses
        await self._word.record(went)
        records = [self._status_record(s) for s in went]
        if failed:
            endings = await self._failures.end(failed)
            statuses = went + endings.failed
            records += [self._status_record(s) for s in endings.failed] + endings.resend
        if parsed.windows:
            await self._windows.record(parsed.windows)
        if parsed.inbound:
            topic = self._topics.inbound_messages
            account_key = self.trust.account_key
            records += [
                inbound_record(topic, m, account=account_key(m.channel, m.account_id))
                for m in parsed.inbound
            ]
        try:
            parked = await self._storing.produce(records)
        except PermanentError as exc:  # Kafka refused a record (its size): nothing retries that
            return await self._stored(channel, body, parsed, statuses, refused=exc)
        return await self._stored(channel, body, parsed, statuses, parked=parked)

    async def _store_batch(self, batch: list[_Common]) -> None:
        """`_store` for the common notifications of one loop iteration, each answered on its
        future: every verdict in one call, then every record in one call."""
        try:
            try:
                await self._word.record_each([item.parsed.statuses for item in batch])
            except _CANNOT_STORE as exc:
                for item in batch:
                    _settle(item.answer, self._unavailable(item.channel, exc))
                return
            records = [[self._status_record(s) for s in item.parsed.statuses] for item in batch]
            outcomes = await self._storing.produce_each(records)
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, bool):  # produced, or parked: nothing left to await
                    statuses = item.parsed.statuses
                    self.accounting.events(item.channel, statuses, item.parsed.inbound)
                    answer = self._summarize(item.channel, item.parsed, statuses, parked=outcome)
                else:
                    answer = await self._answer_failed(item, outcome)
                _settle(item.answer, answer)
        except BaseException as exc:  # a bug, or cancelled: the requests still waiting learn it
            for item in batch:
                if item.answer.done():
                    continue
                if isinstance(exc, Exception):
                    item.answer.set_exception(exc)
                else:
                    item.answer.cancel()
            if not isinstance(exc, Exception):
                raise

    async def _answer_failed(self, item: _Common, outcome: Exception) -> Answer:
        """The answer to a common notification whose records met the failure `Storing.produce`
        would have raised."""
        channel, statuses = item.channel, item.parsed.statuses
        try:
            if isinstance(outcome, PermanentError):
                return await self._stored(
                    channel, item.body, item.parsed, statuses, refused=outcome
                )
            raise outcome
        except _CANNOT_STORE as exc:
            return self._unavailable(channel, exc)

    async def _stored(
        self,
        channel: str,
        body: bytes,
        parsed: Parsed,
        statuses: list[StatusEvent],
        *,
        parked: bool = False,
        refused: PermanentError | None = None,
    ) -> Answer:
        """Its records produced (or parked), or refused by Kafka: the body dead-lettered if it
        has problems, the request counted, the 200 with its summary."""
        problems, error_type = list(parsed.problems), "invalid_record"
        if refused is not None:
            problems.append(f"kafka refused its records: {refused}")
            error_type = "kafka_refused"
        else:
            self.accounting.events(channel, statuses, parsed.inbound)
        if problems:
            await self._storing.dead_letter(channel, body, problems, error_type)
        return self._summarize(channel, parsed, statuses, parked=parked, invalid=bool(problems))

    def _summarize(
        self,
        channel: str,
        parsed: Parsed,
        statuses: list[StatusEvent],
        *,
        parked: bool,
        invalid: bool = False,
    ) -> Answer:
        """A stored notification (its events counted, its problems dead-lettered): what it
        ignored counted, the provider's errors it reported logged, the request counted, the 200
        with its summary."""
        self.accounting.ignored(channel, parsed.ignored)
        for text in parsed.provider_errors:
            log.warning("webhooks: the provider reported an error: %s", text)
        self.accounting.count(channel, "invalid" if invalid else "parked" if parked else "accepted")
        return _summary(len(statuses), len(parsed.inbound), len(parsed.ignored), invalid, parked)

    def _status_record(self, status: StatusEvent) -> OutgoingRecord:
        details: dict[str, Any] = {"provider_message_id": status.provider_message_id}
        if status.error is not None:
            failure = status.error
            code = f"({failure.code}) " if failure.code is not None else ""
            text = ": ".join(t for t in (failure.title, failure.details) if t) or "no reason given"
            details["reason"] = f"{status.channel}: {code}{text}"
            if failure.code is not None:
                details["provider_code"] = failure.code
            if failure.title:
                details["title"] = failure.title
        assert status.message_id is not None
        assert status.conversation_id is not None
        return status_record(
            self._topics.message_status_updates,
            message_id=status.message_id,
            conversation_id=status.conversation_id,
            channel=status.channel,
            status=status.status,
            details=details,
            at=status.at,
        )


@dataclass(slots=True)
class _Common:
    """A common notification waiting for its loop iteration's batch."""

    channel: str
    body: bytes
    parsed: Parsed
    answer: asyncio.Future[Answer]


def _common(parsed: Parsed) -> bool:
    """Statuses of our own sends and nothing else: no failure to end, no echo to remember, no
    read receipt to look up, no window, no user's message, no format problem."""
    if parsed.problems or parsed.inbound or parsed.windows or not parsed.statuses:
        return False
    return all(
        s.kind == "status" and s.message_id is not None and s.status != "FAILED"
        for s in parsed.statuses
    )


@functools.lru_cache(maxsize=256)
def _summary(
    statuses: int, inbound: int, ignored: int, dead_lettered: bool, parked: bool
) -> Answer:
    """The 200 of a stored notification, counting what it did. Made once per summary: most
    notifications say the same (one status, nothing else), and the server then writes the same
    answer's bytes again (intake/http_encoding.py)."""
    summary = {
        "statuses": statuses,
        "inbound": inbound,
        "ignored": ignored,
        "dead_lettered": dead_lettered,
        "parked": parked,
    }
    return Answer(200, orjson.dumps(summary))


def _settle(future: asyncio.Future[Answer], answer: Answer) -> None:
    if not future.done():
        future.set_result(answer)
