"""Records that concurrent callers produce in one event-loop iteration, sent in one call.

Why: the webhooks role produces the one or few records of each request, and the router one status
per send, with many requests or sends in flight at once. One `Producer.send_each` per request costs
a task, a shield, a timer and the call's bookkeeping for a single record: measured in-process (64
concurrent callers, one record each, the shared devstack broker) 76-86 us of CPU per record, against
53-58 us when the records of one loop iteration go out in one call (batching.py, as autopipeline.py
does for Redis commands).

Each caller gets a future of its own records' outcomes (a Delivery, RetryableError or
PermanentError each, in order), or the call's CircuitOpenError; it may stop waiting (a timeout, a
cancel) without affecting the others, and the records it handed over stay the producer's, as
always (kafka/producer.py). One thing is shared: a record that Kafka does not take in time (an
outage) makes the later records of the same call NotSentError, whoever they belong to; they were
never handed over, and their callers send them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from chat4all_workers.background import Spawn
from chat4all_workers.batching import IterationBatcher
from chat4all_workers.kafka.outgoing import OutgoingRecord, with_trace
from chat4all_workers.kafka.producer import Producer, SendOutcome

_Waiting = tuple[Sequence[OutgoingRecord], asyncio.Future[list[SendOutcome]]]


class ProduceCoalescer:
    def __init__(self, producer: Producer, *, spawn: Spawn) -> None:
        """`spawn` owns the task each batch is sent in (background.py)."""
        self._producer = producer
        self._batcher = IterationBatcher(self._send, spawn=spawn)

    def send_each(self, records: Sequence[OutgoingRecord]) -> asyncio.Future[list[SendOutcome]]:
        """The outcome of each of `records`, sent with the others of this loop iteration."""
        outcomes: asyncio.Future[list[SendOutcome]] = self._batcher.future()
        # The call runs in a task of its own: each record keeps its caller's trace.
        self._batcher.add(([with_trace(r) for r in records], outcomes))
        return outcomes

    async def _send(self, batch: list[_Waiting]) -> None:
        records = [record for waiting, _ in batch for record in waiting]
        try:
            outcomes = await self._producer.send_each(records)
        except Exception as exc:  # noqa: BLE001 - not swallowed: each caller gets it
            for _, future in batch:
                if not future.done():  # a caller that stopped waiting cancelled its own
                    future.set_exception(exc)
            return
        start = 0
        for waiting, future in batch:
            mine = outcomes[start : start + len(waiting)]
            start += len(waiting)
            if not future.done():
                future.set_result(mine)
