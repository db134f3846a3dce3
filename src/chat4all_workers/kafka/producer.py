"""The process's one Kafka producer: idempotent, acks=all, behind the circuit breaker.

Every record any role produces goes through `Producer.send`, which waits for the broker's
acknowledgement, adds trace context headers, and turns client errors into the runtime's error
tree: retriable broker trouble becomes RetryableError (and counts against the breaker), a record
the broker can never accept becomes PermanentError. A caller that must not block while Kafka is
away opts in with `fallback=True`, and the record is parked in the Redis fallback list instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from chat4all_workers.config import BreakerSettings, KafkaSettings
from chat4all_workers.errors import CircuitOpenError, PermanentError, RetryableError
from chat4all_workers.kafka.breaker import BreakerState, CircuitBreaker
from chat4all_workers.observability.tracing import KafkaHeaders, headers_with_trace


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    value: bytes | None  # None: a tombstone (only a dead-lettered or replayed one)
    key: bytes | None = None
    headers: KafkaHeaders = field(default_factory=list)


@dataclass(frozen=True)
class Delivery:
    """Where the record went: Kafka (topic/partition/offset) or the fallback list (offset None)."""

    topic: str
    partition: int | None
    offset: int | None

    @property
    def parked(self) -> bool:
        return self.offset is None


FallbackSink = Callable[[bytes], Awaitable[None]]


def fallback_envelope(record: OutgoingRecord) -> bytes:
    """The SPEC section 5 envelope for a record parked while Kafka is unreachable."""
    value: object = None
    if record.value is not None:
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            value = record.value.decode("utf-8", errors="replace")
    return orjson.dumps(
        {
            "topic": record.topic,
            "key": record.key.decode("utf-8", errors="replace") if record.key is not None else None,
            "value": value,
            "headers": {k: v.decode("latin-1") for k, v in record.headers},
        }
    )


class Producer:
    def __init__(
        self,
        kafka: KafkaSettings,
        breaker_settings: BreakerSettings,
        *,
        on_breaker_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._settings = kafka
        self._call_timeout_s = breaker_settings.call_timeout_s
        self.breaker = CircuitBreaker(
            "kafka",
            failure_threshold=breaker_settings.failure_threshold,
            cooldown_s=breaker_settings.cooldown_s,
            on_change=on_breaker_change,
        )
        self.fallback_sink: FallbackSink | None = None
        self._client = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=kafka.linger_ms,
            request_timeout_ms=kafka.request_timeout_ms,
        )

    async def start(self) -> None:
        await self._client.start()

    async def stop(self) -> None:
        await self._client.stop()

    async def send(self, record: OutgoingRecord, *, fallback: bool = False) -> Delivery:
        """Produce one record and wait for its acknowledgement."""
        (delivery,) = await self.send_many([record], fallback=fallback)
        return delivery

    async def send_many(
        self, records: Sequence[OutgoingRecord], *, fallback: bool = False
    ) -> list[Delivery]:
        """Produce records in order and wait for all acknowledgements (one breaker call).

        Records to one partition keep their order because the producer is idempotent. With
        `fallback=True`, an open breaker or a retriable failure parks every record of the call in
        the fallback list instead of raising; this can duplicate a record that Kafka did accept
        before the failure, which consumers absorb (they deduplicate).
        """
        if not records:
            return []
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            if fallback and self.fallback_sink is not None:
                return await self._park(records)
            raise
        try:
            async with asyncio.timeout(self._call_timeout_s):
                futures = []
                for r in records:
                    future = await self._client.send(
                        r.topic, r.value, key=r.key, headers=headers_with_trace(r.headers)
                    )
                    # Only the first failure is raised (by gather, or by a later `send` that
                    # refuses its record); the others are seen here, or asyncio would log them
                    # as "Future exception was never retrieved".
                    future.add_done_callback(_retrieve_exception)
                    futures.append(future)
                # One record (the common case) needs no gathering future of its own.
                metas = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            if isinstance(exc, KafkaError) and not exc.retriable:
                self.breaker.record_success()  # the broker answered; the record is the problem
                raise PermanentError(f"kafka refused the record: {exc!r}") from exc
            self.breaker.record_failure()
            if fallback and self.fallback_sink is not None:
                return await self._park(records)
            raise RetryableError(f"kafka send failed: {exc!r}") from exc
        except BaseException:
            self.breaker.record_abandoned()  # cancelled mid-call: free the half-open probe slot
            raise
        self.breaker.record_success()
        return [Delivery(m.topic, m.partition, m.offset) for m in metas]

    async def probe(self) -> bool:
        """True when the cluster answers a metadata request (used by /readyz)."""
        try:
            async with asyncio.timeout(5):
                await self._client.client.fetch_all_metadata()
        except (KafkaError, TimeoutError, OSError):
            return False
        return True

    async def _park(self, records: Sequence[OutgoingRecord]) -> list[Delivery]:
        assert self.fallback_sink is not None
        for r in records:
            await self.fallback_sink(fallback_envelope(r))
        return [Delivery(r.topic, None, None) for r in records]


def _retrieve_exception(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
