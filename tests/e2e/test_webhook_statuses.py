"""Status webhooks end to end: signed POSTs -> webhooks role -> message_status_updates -> status
updater -> `messages.status` and `message_status_history`, against real Kafka and PostgreSQL.

Meta retries and reorders: of the webhooks posted, 20 % are duplicates of others, and they arrive
in a random order (READ before DELIVERED, SENT last...). Every message must end READ, with one
history row per status and none twice. `WEBHOOK_E2E_WEBHOOKS` sets how many are posted (10,000 by
default, as `make test` runs it; `make soak` posts 50,000).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections import Counter

import asyncpg
import orjson
import pytest

from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from harness.deployment import Deployment
from harness.waiting import eventually
from tests.roles.webhook_support import PHONE_NUMBER_ID, Endpoint, running, webhook_settings
from tests.support import metric_value

WEBHOOKS = int(os.environ.get("WEBHOOK_E2E_WEBHOOKS", "10000"))
DUPLICATES = 0.2
CONNECTIONS = 32

pytestmark = [pytest.mark.stack, pytest.mark.timeout(max(120, WEBHOOKS // 50))]


def plan(messages: list[uuid.UUID], duplicates: int, rng: random.Random) -> list[bytes]:
    """Three statuses per message, `duplicates` of them posted twice, all in a random order;
    one status per POST, as Meta sends them."""
    bodies = []
    for n, message_id in enumerate(messages):
        callback = orjson.dumps({"message_id": str(message_id), "conversation_id": n % 50})
        for wa_status in ("sent", "delivered", "read"):
            item = whatsapp_status(
                f"wamid.{message_id.hex}",
                wa_status,
                at_s=1_764_000_000 + n,
                recipient_id="5511999990000",
                callback_data=callback.decode(),
            )
            bodies.append(
                orjson.dumps(
                    whatsapp_notification(phone_number_id=PHONE_NUMBER_ID, statuses=[item])
                )
            )
    bodies += rng.choices(bodies, k=duplicates)
    rng.shuffle(bodies)
    return bodies


async def post_all(endpoint: Endpoint, bodies: list[bytes]) -> Counter[int]:
    answers: Counter[int] = Counter()
    queue = list(reversed(bodies))

    async def connection() -> None:
        while queue:
            code, _ = await endpoint.post("whatsapp", queue.pop())
            answers[code] += 1

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return answers


async def test_status_webhooks_with_duplicates_and_reordering_end_every_message_read_once(
    deployment: Deployment,
) -> None:
    rng = random.Random(14)
    message_count = round(WEBHOOKS / (3 * (1 + DUPLICATES)))
    duplicates = WEBHOOKS - 3 * message_count
    messages = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(message_count)]
    bodies = plan(messages, duplicates, rng)
    pool = await asyncpg.create_pool(deployment.database_url, min_size=1, max_size=2)
    try:
        await pool.executemany(
            "INSERT INTO messages (id, conversation_id, channels) VALUES ($1, $2, $3)",
            [(m, n % 50, '["whatsapp"]') for n, m in enumerate(messages)],
        )
        settings = webhook_settings(deployment)
        async with running(settings, roles=("webhooks", "status_updater")) as endpoint:
            answers = await post_all(endpoint, bodies)
            processed = endpoint.supervisor.metrics.messages_processed

            def consumed(outcome: str) -> float:
                labels = {"role": "status_updater", "channel": "whatsapp", "outcome": outcome}
                try:
                    return metric_value(processed, labels)
                except KeyError:
                    return 0.0

            await eventually(
                lambda: consumed("applied") + consumed("duplicate") == WEBHOOKS,
                timeout_s=max(60, WEBHOOKS / 100),
                message="every status update consumed",
            )
            applied, repeated = consumed("applied"), consumed("duplicate")
        statuses = Counter(r["status"] for r in await pool.fetch("SELECT status FROM messages"))
        history = await pool.fetch(
            """SELECT message_id, channel, status, count(*) AS n FROM message_status_history
               GROUP BY message_id, channel, status"""
        )
    finally:
        await pool.close()

    assert answers == {200: WEBHOOKS}
    assert (applied, repeated) == (3 * message_count, duplicates)
    assert statuses == {"READ": message_count}
    assert len(history) == 3 * message_count
    assert {r["n"] for r in history} == {1}  # no (message, channel, status) twice
    assert Counter(r["status"] for r in history) == dict.fromkeys(
        ("SENT", "DELIVERED", "READ"), message_count
    )
