"""Storing what a notification carries: its records produced, or its body dead-lettered.

200 only once Kafka acknowledged every record of the request, or, while the Kafka breaker is
open, once they are parked in the Redis fallback list (the backfill role replays them). Any other
failure to store them raises, for a 503: Meta's own retries cover our outage. A request waits for
Kafka at most `webhooks.store_timeout_s`, then leaves its records with the producer (which owns
their fate and still delivers them: the copy Meta sends again is a harmless duplicate). The
records of concurrent requests go to Kafka in one call per loop iteration (kafka/coalescing.py),
and their waits are timed by one timer (`_Deadlines`), not a timeout per request.

A signed body that violates the format is dead-lettered as it came (`dlq.source=webhooks`,
`invalid_record`, the reason naming what is wrong; not replayable: it belongs to no topic of
ours): Meta would otherwise retry it for days, and it would never get better.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from chat4all_workers.background import Spawn
from chat4all_workers.errors import CircuitOpenError, RetryableError
from chat4all_workers.kafka.coalescing import ProduceCoalescer
from chat4all_workers.kafka.dlq import dead_letter
from chat4all_workers.kafka.outgoing import OutgoingRecord
from chat4all_workers.kafka.producer import Delivery, Producer
from chat4all_workers.observability.metrics import Metrics

log = logging.getLogger(__name__)

_MAX_REASON_PROBLEMS = 5


class Storing:
    def __init__(
        self,
        producer: Producer,
        *,
        spawn: Spawn,
        dlq_topic: str,
        timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self._producer = producer
        # A request that stops waiting (503) leaves its records with the producer.
        self._coalescer = ProduceCoalescer(producer, spawn=spawn)
        self._dlq_topic = dlq_topic
        self._timeout_s = timeout_s
        self._deadlines = _Deadlines(timeout_s)
        self._metrics = metrics

    async def produce(self, records: list[OutgoingRecord]) -> bool:
        """Produce and await the acks; True when parked instead (the breaker is open)."""
        (outcome,) = await self.produce_each([records])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def produce_each(self, requests: list[list[OutgoingRecord]]) -> list[bool | Exception]:
        """`produce` for the records of several requests, in one call: for each, parked or
        not, or the failure `produce` would raise (its first record's that failed)."""
        if not any(requests):
            return [False] * len(requests)
        # With the records of the other requests of this loop iteration, in one call.
        sending = self._coalescer.send_each([record for mine in requests for record in mine])
        self._deadlines.watch(sending)
        try:
            outcomes = await sending
        except TimeoutError:
            # Not abandoned: the producer keeps the records and delivers them (its verdict is
            # final); the answer says only that they are not stored yet.
            late = RetryableError(f"kafka did not acknowledge within {self._timeout_s}s")
            return [late if mine else False for mine in requests]
        except CircuitOpenError:
            parking = [self._park(mine) for mine in requests]
            return list(await asyncio.gather(*parking))
        found: list[bool | Exception] = []
        start = 0
        for mine in requests:
            end = start + len(mine)
            failed = (o for o in outcomes[start:end] if not isinstance(o, Delivery))
            found.append(next(failed, False))
            start = end
        return found

    async def _park(self, records: list[OutgoingRecord]) -> bool | Exception:
        """The breaker is open: `records` go through the producer's fallback, parked."""
        if not records:
            return False
        try:
            deliveries = await self._producer.send_many(records, fallback=True)
        except Exception as exc:  # noqa: BLE001 - not swallowed: the request's answer says it
            return exc
        return any(d.parked for d in deliveries)

    async def dead_letter(
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
            dlq_topic=self._dlq_topic,
            value=body,
            key=f"webhook:{channel}".encode(),
            source="webhooks",
            reason=reason,
            error_type=error_type,
            attempts=1,
            # Not replayable: a provider's notification belongs to no topic of ours.
            original_topic="",
            metrics=self._metrics,
        )


class _Deadlines:
    """Futures failed with TimeoutError when not done `timeout_s` after they were watched.

    One timer for them all, armed for the oldest: every future gets the same time, so they
    expire in the order they were watched, and the ones done meanwhile are dropped as new ones
    come (a request's wait is a few milliseconds; the time-out, seconds).
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._watched: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[Any]) -> None:
        watched = self._watched
        while watched and watched[0][1].done():
            watched.popleft()
        loop = future.get_loop()
        deadline = loop.time() + self._timeout_s
        watched.append((deadline, future))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        watched = self._watched
        while watched:
            deadline, future = watched[0]
            if not future.done():
                if deadline > now:
                    self._timer = loop.call_at(deadline, self._expire)
                    return
                future.set_exception(TimeoutError())
            watched.popleft()
