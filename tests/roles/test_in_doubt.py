"""Sends in doubt settled by the provider's word: the router against the channel mocks calling
the webhooks role back (as Meta calls an app), with real Kafka and Redis.

The provider's side (the mocks and the webhooks role) runs in one supervisor, the router in
another, as in production; a send is put in doubt by what causes it for real: an expired lease
left in its dedup marker (a worker killed mid-send), or a provider slower than the channel's
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.app import App
from chat4all_workers.config import CHANNELS, Settings
from chat4all_workers.meta.notifications import whatsapp_notification, whatsapp_status
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from chat4all_workers.roles.webhooks import WebhookSettings
from harness.deployment import DEV_APP_SECRET, Deployment
from harness.topics import read_topic
from harness.waiting import eventually
from tests.support import metric_value, produce

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

FAST = {"retry_base_s": 0.01, "retry_cap_s": 0.05}


def message(conversation: int, content: str, *, channels: Any = ("whatsapp",)) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "payload": {"type": "text", "content": content},
        "channels": list(channels),
        "recipients": {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"},
        "created_at": "2026-11-28T10:30:00Z",
    }


def record(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    return f"conversation:{doc['conversation_id']}".encode(), orjson.dumps(doc)


@dataclass
class Provider:
    """The mocks and the webhooks role, running: what the provider accepted and said."""

    settings: Settings
    supervisor: App
    http: aiohttp.ClientSession

    async def accepted(self, channel: str) -> list[dict[str, Any]]:
        base = getattr(self.settings, channel).base_url
        async with self.http.get(f"{base}/__mock__/sent") as response:
            return list(await response.json())

    async def stats(self, channel: str) -> dict[str, Any]:
        base = getattr(self.settings, channel).base_url
        async with self.http.get(f"{base}/__mock__/stats") as response:
            stats: dict[str, Any] = await response.json()
            return stats

    async def says_sent(self, message_id: str, wamid: str, *, conversation: int) -> None:
        """A WhatsApp `sent` status webhook, signed, as Meta posts it."""
        callback = orjson.dumps({"message_id": message_id, "conversation_id": conversation})
        status = whatsapp_status(
            wamid, "sent", at_s=int(time.time()), recipient_id="55", callback_data=callback.decode()
        )
        body = orjson.dumps(
            whatsapp_notification(
                phone_number_id=self.settings.whatsapp.phone_number_id, statuses=[status]
            )
        )
        url = f"http://127.0.0.1:{self.settings.section(WebhookSettings).port}/webhooks/whatsapp"
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(DEV_APP_SECRET, body)}
        async with self.http.post(url, data=body, headers=headers) as response:
            assert response.status == 200


@contextlib.asynccontextmanager
async def provider(settings: Settings) -> AsyncIterator[Provider]:
    roles = ["whatsapp_mock", "instagram_mock", "webhooks"]
    async with (
        App(settings, roles=roles, serve_http=False) as sup,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(10)
        yield Provider(settings, sup, http)


async def route(settings: Settings) -> App:
    """The router over the topic until it is drained."""
    async with App(settings, roles=["router"], drain=True, serve_http=False) as sup:
        await asyncio.wait_for(sup.wait(), 90)
    assert [s.restarts_total for s in sup.stats()] == [0]
    return sup


def in_doubt(router: App, channel: str, resolution: str) -> float:
    labels = {"channel": channel, "resolution": resolution}
    return metric_value(router.metrics.router_in_doubt, labels)


async def router_statuses(deployment: Deployment, status: str) -> list[dict[str, Any]]:
    """The router's `status` updates (the webhooks role produces SENT too: told apart by their
    timestamp, which the router takes to the microsecond and the provider in whole seconds)."""
    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    updates = [orjson.loads(r.value) for r in records]
    return [u for u in updates if u["new_status"] == status and "." in u["timestamp"]]


async def dead_letters(deployment: Deployment) -> list[dict[str, str]]:
    records = await read_topic(deployment.stack, deployment.topics["dlq"])
    return [{k: v.decode() for k, v in r.headers if k.startswith("dlq.")} for r in records]


@contextlib.asynccontextmanager
async def redis_client(deployment: Deployment) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(deployment.stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def marker(deployment: Deployment, doc: dict[str, Any], channel: str = "whatsapp") -> str:
    return f"{deployment.redis_prefix}message:dedup:{doc['message_id']}:{channel}"


ORPHAN = "lease:killedworker1:1.000"  # what a router killed mid-send leaves: a lease, expired


async def taken_over(redis: aioredis.Redis, key: str) -> bool:
    """A router claimed the orphaned lease (its own is there now): it waits, in doubt."""
    value = await redis.get(key)
    return value is not None and value != ORPHAN.encode()


async def test_a_provider_slower_than_the_channel_timeout_gets_one_copy_per_message(
    deployment: Deployment,
) -> None:
    docs = [message(c, f"slow-{c}", channels=CHANNELS) for c in range(20)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    settings = deployment.settings(
        mocks={"latency_ms": 900.0},
        whatsapp={"timeout_s": 0.3},
        instagram={"timeout_s": 0.3},
        router={**FAST, "in_doubt_window_s": 20.0},
    )

    async with provider(settings) as side:
        router = await route(settings)
        accepted = {c: await side.accepted(c) for c in CHANNELS}
        requests = {c: (await side.stats(c))["requests"] for c in CHANNELS}

    sent = await router_statuses(deployment, "SENT")
    for channel in CHANNELS:
        ids = [a["message_id"] for a in accepted[channel]]
        assert sorted(ids) == sorted(d["message_id"] for d in docs)  # one copy each, not three
        assert requests[channel] == len(docs)
        assert in_doubt(router, channel, "confirmed") == len(docs)
        by_message = {u["message_id"]: u for u in sent if u["channel"] == channel}
        assert {m: u["details"]["provider_message_id"] for m, u in by_message.items()} == {
            a["message_id"]: a["provider_message_id"] for a in accepted[channel]
        }
    assert await dead_letters(deployment) == []


async def test_an_orphaned_send_waits_for_the_providers_word_and_is_not_sent_again(
    deployment: Deployment,
) -> None:
    doc = message(1, "sent by a worker killed before it could mark it")
    settings = deployment.settings(router={**FAST, "in_doubt_window_s": 60.0})
    async with redis_client(deployment) as redis, provider(settings) as side:
        await redis.set(marker(deployment, doc), ORPHAN, ex=600)
        await produce(deployment.stack, deployment.topics["message_processing"], [record(doc)])
        routing = asyncio.ensure_future(route(settings))
        await eventually(
            lambda: taken_over(redis, marker(deployment, doc)),
            message="the router waiting for the provider's word",
        )
        started = time.monotonic()
        await side.says_sent(doc["message_id"], "wamid.FROM-META", conversation=1)
        router = await routing
        settled_s = time.monotonic() - started
        accepted = await side.accepted("whatsapp")

    (sent,) = await router_statuses(deployment, "SENT")
    assert accepted == []  # not sent a second time
    assert sent["details"] == {"provider_message_id": "wamid.FROM-META"}
    assert in_doubt(router, "whatsapp", "confirmed") == 1
    assert settled_s < 5  # polled, not waited out


async def test_an_orphaned_send_the_provider_stays_silent_about_is_sent_once_after_the_window(
    deployment: Deployment,
) -> None:
    docs = [message(1, "never reached the provider"), message(1, "the next one")]
    settings = deployment.settings(router={**FAST, "in_doubt_window_s": 0.5})
    async with redis_client(deployment) as redis, provider(settings) as side:
        await redis.set(marker(deployment, docs[0]), ORPHAN, ex=600)
        await produce(
            deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
        )
        router = await route(settings)
        accepted = await side.accepted("whatsapp")

    assert [a["text"] for a in accepted] == [d["payload"]["content"] for d in docs]  # in order
    assert in_doubt(router, "whatsapp", "resent") == 1
    assert await dead_letters(deployment) == []


async def test_in_dead_letter_mode_a_silent_window_fails_the_channel_for_that_record_only(
    deployment: Deployment,
) -> None:
    doc = message(1, "in doubt, then given up")
    mode = {**FAST, "in_doubt_window_s": 0.3, "on_unknown_outcome": "dead_letter"}
    settings = deployment.settings(router=mode)
    topic = deployment.topics["message_processing"]
    async with redis_client(deployment) as redis, provider(settings) as side:
        await redis.set(marker(deployment, doc), ORPHAN, ex=600)
        await produce(deployment.stack, topic, [record(doc)])
        first = await route(settings)
        given_up = await redis.get(marker(deployment, doc))
        # The same record again (a crash before its commit): a new group re-reads offset 0.
        again = Deployment(**{**deployment.__dict__, "group": f"{deployment.group}-again"})
        await route(again.settings(router=mode))
        nothing_yet = await side.accepted("whatsapp")
        # A replay from the DLQ: the record re-published, read by the first group.
        await produce(deployment.stack, topic, [record(doc)])
        await route(settings)
        accepted = await side.accepted("whatsapp")

    failed = await router_statuses(deployment, "FAILED")
    dead = await dead_letters(deployment)
    assert in_doubt(first, "whatsapp", "dead_lettered") == 1
    partition = next(r.partition for r in await read_topic(deployment.stack, topic))
    assert given_up == f"failed:delivery_unknown:{topic}:{partition}:0".encode()
    assert [d["dlq.error_type"] for d in dead] == ["delivery_unknown"] * 2  # first, redelivery
    assert len(failed) == 2  # each delivery of the record says FAILED: never left PROCESSING
    assert "given up on by an earlier delivery" in failed[1]["details"]["reason"]
    assert nothing_yet == []
    assert [a["message_id"] for a in accepted] == [doc["message_id"]]  # the replay sent it


async def test_a_marker_the_original_router_left_is_read_as_sent(deployment: Deployment) -> None:
    doc = message(1, "sent by the original router")
    settings = deployment.settings(router=FAST)
    async with redis_client(deployment) as redis, provider(settings) as side:
        await redis.set(marker(deployment, doc), "1", ex=600)  # not a format of ours
        await produce(deployment.stack, deployment.topics["message_processing"], [record(doc)])
        router = await route(settings)
        accepted = await side.accepted("whatsapp")

    (sent,) = await router_statuses(deployment, "SENT")
    assert accepted == []
    assert sent["details"] == {"provider_message_id": None, "dedup_marker": "foreign"}
    assert in_doubt(router, "whatsapp", "resent") == 0


async def test_router_remembers_the_instagram_mid_for_read_receipts(
    deployment: Deployment,
) -> None:
    doc = message(5, "to instagram", channels=["instagram"])
    # No app secret: the mock sends no echo, so only the router can have written the index.
    settings = deployment.settings(router=FAST, instagram={"app_secret": ""})
    async with redis_client(deployment) as redis, provider(settings) as side:
        await produce(deployment.stack, deployment.topics["message_processing"], [record(doc)])
        await route(settings)
        (accepted,) = await side.accepted("instagram")
        key = (
            f"{deployment.redis_prefix}message:provider:instagram:{accepted['provider_message_id']}"
        )
        indexed = await redis.get(key)
        ttl = await redis.ttl(key)

    assert indexed is not None
    assert orjson.loads(indexed) == {"message_id": doc["message_id"], "conversation_id": 5}
    assert 0 < ttl <= settings.delivery.provider_index_ttl_s


async def test_a_router_stopping_while_a_send_is_in_doubt_hands_it_back_at_once(
    deployment: Deployment,
) -> None:
    doc = message(1, "in doubt when the router stops")
    settings = deployment.settings(router={**FAST, "in_doubt_window_s": 60.0})
    async with redis_client(deployment) as redis, provider(settings) as side:
        await redis.set(marker(deployment, doc), ORPHAN, ex=600)
        await produce(deployment.stack, deployment.topics["message_processing"], [record(doc)])
        async with App(settings, roles=["router"], serve_http=False) as router:
            await eventually(
                lambda: taken_over(redis, marker(deployment, doc)),
                message="the router waiting for the provider's word",
            )
            stopping = time.monotonic()
        stopped_s = time.monotonic() - stopping
        left = await redis.get(marker(deployment, doc))
        accepted = await side.accepted("whatsapp")

    assert stopped_s < 5  # not the window, not the drain deadline
    assert isinstance(left, bytes)
    assert left.startswith(b"lease:")
    assert left.endswith(b":0")  # expired at once: the next owner waits for the provider
    assert accepted == []
    assert await router_statuses(deployment, "SENT") == []
    assert await router_statuses(deployment, "FAILED") == []
    assert in_doubt(router, "whatsapp", "handed_back") == 1
