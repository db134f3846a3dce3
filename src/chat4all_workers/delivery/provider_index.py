"""Provider message id -> our message, for webhooks that name a message only by the provider's id.

WhatsApp's status webhooks echo the callback data our send set (`biz_opaque_callback_data`), so
they name our message themselves. Instagram's read receipts carry only the `mid` its Send API
returned. This index maps it back:

    message:provider:{channel}:{provider_message_id} -> {"message_id": ..., "conversation_id": 42}

for `delivery.provider_index_ttl_s` (24 h by default, like the dedup window: a receipt later than
that finds nothing and is counted as `unknown_message`). It is written when the provider's id
becomes known: by the router when it marks a send done (through the auto-pipeline of its dedup
markers, so the write rides the same round trip), and by the webhooks role from an Instagram
echo that carries our metadata; it is read by the webhooks role. Every key
goes through `Resources.redis_key`. About 150 bytes of Redis memory per Instagram message sent
within the TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
import redis.asyncio as aioredis

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.callback import callback_ids


@frozen(slots=True)
class MessageRef:
    message_id: str
    conversation_id: int


class ProviderIndex:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key: Callable[[str], str],
        ttl_s: int,
        pipe: AutoPipeline | None = None,
    ) -> None:
        self._redis = redis
        self._key = key
        self._ttl_s = ttl_s
        self._pipe = pipe

    def key(self, channel: str, provider_message_id: str) -> str:
        return self._key(f"message:provider:{channel}:{provider_message_id}")

    async def remember(self, channel: str, entries: Sequence[tuple[str, MessageRef]]) -> None:
        """Map each (provider id, our message) for the TTL; one round trip (with an
        auto-pipeline, shared with the other commands of the loop iteration)."""
        if not entries:
            return
        if self._pipe is not None:
            for provider_id, ref in entries:
                value = orjson.dumps(
                    {"message_id": ref.message_id, "conversation_id": ref.conversation_id}
                )
                await self._pipe.execute(
                    "SET", self.key(channel, provider_id), value, "EX", self._ttl_s
                )
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for provider_id, ref in entries:
                value = orjson.dumps(
                    {"message_id": ref.message_id, "conversation_id": ref.conversation_id}
                )
                pipe.set(self.key(channel, provider_id), value, ex=self._ttl_s)
            await pipe.execute()

    async def lookup(
        self, channel: str, provider_message_ids: Sequence[str]
    ) -> dict[str, MessageRef]:
        """Our message for each provider id the index knows (one MGET); unknown ids are absent."""
        if not provider_message_ids:
            return {}
        values = await self._redis.mget([self.key(channel, p) for p in provider_message_ids])
        found = {}
        for provider_id, raw in zip(provider_message_ids, values, strict=True):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            ids = callback_ids(text)
            if ids is not None:
                found[provider_id] = MessageRef(*ids)
        return found
