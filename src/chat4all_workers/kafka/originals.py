"""One record read back by its position: the original of a send that failed later, by webhook.

A failure Meta reports after its answer (a `failed` status webhook) names our send through the
callback data, which carries the record the send came from ("{topic}:{partition}:{offset}",
meta/callback.py). To end it as the same failure would have ended synchronously, the webhooks
role needs that record's bytes: to dead-letter it as it was (replayable), or to publish it again
(a throttled or transient failure). They are read here, one at a time, by a consumer without a
group (it commits nothing, joins nothing), opened on first use: such failures are rare, and a
role that never sees one never connects it. None when the record is gone (retention) or the
position does not exist.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from chat4all_workers.config import KafkaSettings
from chat4all_workers.kafka.records import ConsumedRecord

_FETCH_TIMEOUT_MS = 5000


class OriginalRecords:
    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._turn = asyncio.Lock()  # one read at a time: assign, seek, fetch

    async def fetch(self, topic: str, partition: int, offset: int) -> ConsumedRecord | None:
        async with self._turn:
            consumer = await self._open()
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            beginning = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            if not beginning <= offset < end:
                return None
            consumer.seek(tp, offset)
            batch = await consumer.getmany(tp, timeout_ms=_FETCH_TIMEOUT_MS, max_records=1)
            for record in batch.get(tp, []):
                if record.offset == offset:
                    return ConsumedRecord.from_aiokafka(record)
            return None

    async def aclose(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.bootstrap_servers,
                client_id=f"{self._settings.client_id}-originals",
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=self._settings.request_timeout_ms,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer
