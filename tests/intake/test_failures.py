"""intake/failures.py: a send the provider fails later, by webhook, ends as the same answer
given at once would have ended it; with the webhooks role running against the real stack."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.meta.callback import callback_data
from chat4all_workers.meta.events import StatusError
from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from harness.deployment import Deployment
from harness.topics import read_topic
from tests.roles.webhook_support import PHONE_NUMBER_ID, running, webhook_settings
from tests.support import metric_value, produce

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

RECIPIENT = "5511999990000"


async def original(deployment: Deployment) -> tuple[str, bytes, str]:
    """A message_processing record as the router sent it: (message id, its bytes, origin)."""
    message_id = str(uuid.uuid4())
    value = orjson.dumps(
        {
            "message_id": message_id,
            "conversation_id": 42,
            "payload": {"type": "text", "content": "oi"},
            "channels": ["whatsapp"],
            "recipients": {"whatsapp": f"+{RECIPIENT}"},
        }
    )
    topic = deployment.topics["message_processing"]
    await produce(deployment.stack, topic, [(b"conversation:42", value)])
    (record,) = [r for r in await read_topic(deployment.stack, topic) if r.value == value]
    return message_id, value, f"{topic}:{record.partition}:{record.offset}"


def failed(message_id: str, origin: str, code: int, title: str, wamid: str) -> dict[str, Any]:
    item = whatsapp_status(
        wamid,
        "failed",
        at_s=int(time.time()),
        recipient_id=RECIPIENT,
        callback_data=callback_data(message_id, 42, origin=origin),
        error=StatusError(code, title, "the provider's details"),
    )
    return whatsapp_notification(phone_number_id=PHONE_NUMBER_ID, statuses=[item])


def marker_key(deployment: Deployment, message_id: str) -> str:
    return f"{deployment.redis_prefix}message:dedup:{message_id}:whatsapp"


async def test_failures_dead_letter_the_original_of_a_rejected_send_once(
    deployment: Deployment,
) -> None:
    message_id, value, origin = await original(deployment)
    redis = aioredis.from_url(deployment.stack.redis_url)
    body = failed(message_id, origin, 131026, "Message undeliverable", "wamid.F")
    try:
        await redis.set(marker_key(deployment, message_id), "sent:wamid.F", ex=600)
        async with running(webhook_settings(deployment)) as endpoint:
            first, _ = await endpoint.post("whatsapp", body)
            again, _ = await endpoint.post("whatsapp", body)  # Meta delivers it twice
            late = whatsapp_status(
                "wamid.F", "read", at_s=int(time.time()), recipient_id=RECIPIENT,
                callback_data=callback_data(message_id, 42, origin=origin),
            )  # fmt: skip
            read, _ = await endpoint.post(
                "whatsapp", whatsapp_notification(phone_number_id=PHONE_NUMBER_ID, statuses=[late])
            )
            counted = metric_value(
                endpoint.supervisor.metrics.webhook_async_failures,
                {"channel": "whatsapp", "error_class": "rejected", "action": "dead_lettered"},
            )
        marker = await redis.get(marker_key(deployment, message_id))
    finally:
        await redis.aclose()
    letters = await read_topic(deployment.stack, deployment.topics["dlq"])
    updates = [
        orjson.loads(r.value)
        for r in await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    ]

    assert (first, again, read) == (200, 200, 200)
    assert marker == f"failed:provider_rejected:{origin}#wamid.F".encode()  # not revived
    (letter,) = letters  # once, whatever the duplicates
    headers = {k: v.decode() for k, v in letter.headers}
    assert (letter.value, letter.key) == (value, b"conversation:42")  # replayable as it was
    assert headers["dlq.error_type"] == "provider_rejected"
    assert headers["dlq.provider_code"] == "131026"
    assert headers["dlq.original_topic"] == deployment.topics["message_processing"]
    assert "whatsapp: (131026) Message undeliverable" in headers["dlq.reason"]
    assert [u["new_status"] for u in updates].count("FAILED") >= 1
    assert counted == 1.0


async def test_failures_publish_a_throttled_send_again_with_its_history(
    deployment: Deployment,
) -> None:
    message_id, value, origin = await original(deployment)
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        await redis.set(marker_key(deployment, message_id), "sent:wamid.T", ex=600)
        async with running(webhook_settings(deployment)) as endpoint:
            code, _ = await endpoint.post(
                "whatsapp", failed(message_id, origin, 130429, "Rate limit hit", "wamid.T")
            )
        marker = await redis.get(marker_key(deployment, message_id))
    finally:
        await redis.aclose()
    copies = [
        r
        for r in await read_topic(deployment.stack, deployment.topics["message_processing"])
        if r.value == value
    ]
    updates = await read_topic(deployment.stack, deployment.topics["message_status_updates"])

    assert code == 200
    assert marker == f"failed:resent:{origin}#wamid.T".encode()
    assert len(copies) == 2  # the original and its copy
    headers = {k: v.decode() for k, v in copies[1].headers}
    assert headers["c4a.attempts"] == "1"
    assert headers["c4a.resent_from"] == origin
    assert "c4a.throttled_since" in headers
    assert [orjson.loads(u.value)["new_status"] for u in updates] == []  # no FAILED: not final
    assert await read_topic(deployment.stack, deployment.topics["dlq"]) == []


async def test_failures_leave_a_send_that_another_one_replaced(deployment: Deployment) -> None:
    message_id, _, origin = await original(deployment)
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        await redis.set(marker_key(deployment, message_id), "sent:wamid.NEW", ex=600)
        async with running(webhook_settings(deployment)) as endpoint:
            code, _ = await endpoint.post(
                "whatsapp", failed(message_id, origin, 131026, "Message undeliverable", "wamid.OLD")
            )
        marker = await redis.get(marker_key(deployment, message_id))
    finally:
        await redis.aclose()

    assert code == 200
    assert marker == b"sent:wamid.NEW"
    assert await read_topic(deployment.stack, deployment.topics["dlq"]) == []


async def test_failures_close_the_window_a_late_131047_names(deployment: Deployment) -> None:
    message_id, _, origin = await original(deployment)
    redis = aioredis.from_url(deployment.stack.redis_url)
    window = f"{deployment.redis_prefix}window:whatsapp:{PHONE_NUMBER_ID}:{RECIPIENT}"
    try:
        await redis.set(marker_key(deployment, message_id), "sent:wamid.W", ex=600)
        async with running(webhook_settings(deployment)) as endpoint:
            code, _ = await endpoint.post(
                "whatsapp", failed(message_id, origin, 131047, "Re-engagement message", "wamid.W")
            )
        raw = await redis.get(window)
        closed = raw.encode() if isinstance(raw, str) else raw or b""
    finally:
        await redis.aclose()
    (letter,) = await read_topic(deployment.stack, deployment.topics["dlq"])

    assert code == 200
    assert closed.startswith(b"closed:")
    assert dict(letter.headers)["dlq.error_type"] == b"window_closed"
