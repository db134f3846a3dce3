"""Meta's protocol as it is, end to end: the mocks set as a real account (windows enforced,
templates, media fetched, answers that prove nothing, failures reported later by webhook), the
webhooks role taking Meta's callbacks, and the router, over real Kafka, Redis, PostgreSQL and S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from miniopy_async.api import Minio

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.delivery.markers import marker_key
from chat4all_workers.kafka.replay import ReplayFilter, replay_dlq
from chat4all_workers.meta.windows import user_key
from harness.deployment import Deployment
from harness.topics import read_topic
from harness.waiting import eventually
from tests.support import produce

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

FAST = {"whatsapp_rate_per_s": 2000.0, "instagram_rate_per_s": 2000.0}
QUICK_CALLBACKS = {"delivered_after_ms": 20.0, "read_after_ms": 40.0}


def message(
    conversation: int, channel: str, recipient: str, text: str, **payload: Any
) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "payload": payload or {"type": "text", "content": text},
        "channels": [channel],
        "recipients": {channel: recipient},
    }


def record(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    return f"conversation:{doc['conversation_id']}".encode(), orjson.dumps(doc)


@dataclass
class Platform:
    """The mocks, the webhooks role and a router running on a deployment."""

    deployment: Deployment
    settings: Settings
    router: App
    http: aiohttp.ClientSession

    async def mock(self, channel: str, path: str) -> Any:
        base = getattr(self.settings, channel).base_url
        async with self.http.get(f"{base}{path}") as response:
            return await response.json()

    async def user_writes(self, channel: str, user: str) -> None:
        base = getattr(self.settings, channel).base_url
        async with self.http.post(f"{base}/__mock__/inbound", json={"from": user}) as answer:
            assert answer.status == 200, await answer.text()

    async def send(self, docs: list[dict[str, Any]]) -> None:
        topic = self.deployment.topics["message_processing"]
        await produce(self.deployment.stack, topic, [record(d) for d in docs])

    async def statuses(self) -> list[dict[str, Any]]:
        topic = self.deployment.topics["message_status_updates"]
        return [orjson.loads(r.value) for r in await read_topic(self.deployment.stack, topic)]

    async def dead(self) -> list[dict[str, Any]]:
        records = await read_topic(self.deployment.stack, self.deployment.topics["dlq"])
        return [
            {**{k: v.decode() for k, v in r.headers if k.startswith("dlq.")}, "value": r.value}
            for r in records
        ]

    async def ended(self, docs: list[dict[str, Any]]) -> bool:
        """Every message of `docs` SENT (by the provider's word or the router's) or FAILED."""
        wanted = {d["message_id"] for d in docs}
        done = {s["message_id"] for s in await self.statuses() if s["new_status"] in END}
        return wanted <= done


END = ("SENT", "FAILED")


@contextlib.asynccontextmanager
async def platform(
    deployment: Deployment, *, pace_per_s: float = 2000.0, **mocks: Any
) -> AsyncIterator[Platform]:
    """The mocks and the webhooks role, and a router whose accounts send at `pace_per_s` (0: an
    unpaced account, whose sends claim their marker with their window read)."""
    settings = deployment.settings(
        mocks={**FAST, **QUICK_CALLBACKS, "windows": "open", **mocks},
        whatsapp={"max_rate_per_s": pace_per_s, "pair_burst": 0},
        instagram={"max_rate_per_s": pace_per_s, "media_rate_per_s": 0.0},
        router={"retry_base_s": 0.01, "retry_cap_s": 0.05, "in_doubt_window_s": 30.0},
    )
    roles = ["whatsapp_mock", "instagram_mock", "webhooks"]
    async with (
        App(settings, roles=roles, serve_http=False) as provider,
        App(settings, roles=["router"], serve_http=False) as router,
        aiohttp.ClientSession() as http,
    ):
        await provider.wait_ready(10)
        await router.wait_ready(30)
        yield Platform(deployment, settings, router, http)


async def watching_pauses(router: App, seen: list[str]) -> None:
    """Every /readyz of the router while the test runs: any account it shows paused."""
    while True:
        _, body = await router.readiness()
        seen += [ref for ref, a in body.get("accounts", {}).items() if a["state"] != "active"]
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watched(router: App) -> AsyncIterator[list[str]]:
    seen: list[str] = []
    task = asyncio.create_task(watching_pauses(router, seen))
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_windows_fail_outside_users_after_one_call_and_send_the_rest_once(
    deployment: Deployment,
) -> None:
    """2,000 messages to both channels, 10 % of the users outside their window: each of those
    FAILED window_closed (one call per user, then none: the window is known closed), every
    other SENT once, no account ever paused; a template to a closed-window user SENT."""
    users = {
        "whatsapp": [f"+5511{n:07d}" for n in range(200)],
        "instagram": [f"1784{n:010d}" for n in range(200)],
    }
    outside = {channel: set(names[::10]) for channel, names in users.items()}  # 10 %
    docs = [
        message(c * 1000 + n, channel, user, f"{channel} {n} #{k}")
        for k in range(5)
        for c, channel in enumerate(users)
        for n, user in enumerate(users[channel])
    ]
    closed_docs = [
        d for d in docs if d["recipients"][d["channels"][0]] in outside[d["channels"][0]]
    ]
    async with platform(deployment, windows="enforce") as run:
        for channel, names in users.items():
            for user in names:
                if user not in outside[channel]:
                    await run.user_writes(channel, user)

        async def windows_known() -> bool:
            topic = deployment.topics["inbound_messages"]
            return len(await read_topic(deployment.stack, topic)) >= 360

        await eventually(windows_known, timeout_s=30, message="the users' messages stored")
        async with watched(run.router) as paused:
            await run.send(docs)
            await eventually(lambda: run.ended(docs), timeout_s=120, message="every message")
            template = message(
                1, "whatsapp", sorted(outside["whatsapp"])[0], "",
                type="template", template={"name": "hello_world", "language": {"code": "en_US"}},
            )  # fmt: skip
            await run.send([template])
            await eventually(lambda: run.ended([template]), timeout_s=30, message="the template")
        stats = {c: await run.mock(c, "/__mock__/stats") for c in users}
        accepted = {c: await run.mock(c, "/__mock__/sent") for c in users}
        statuses, dead = await run.statuses(), await run.dead()

    sent_texts = Counter(a["text"] for c in users for a in accepted[c])
    failed = {s["message_id"] for s in statuses if s["new_status"] == "FAILED"}
    sent = {s["message_id"] for s in statuses if s["new_status"] == "SENT"}
    assert paused == []  # a window error is the message's, never the account's
    assert {d["dlq.error_type"] for d in dead} == {"window_closed"}
    assert len(dead) == len(closed_docs) == 200
    assert failed == {d["message_id"] for d in closed_docs}
    for channel in users:  # one call per user outside, then the window is known closed
        assert stats[channel]["window_closed"] == len(outside[channel]), stats[channel]
    assert set(sent_texts.values()) == {1}  # each once
    assert len(sent_texts) == len(docs) - len(closed_docs) + 1  # and the template
    assert sent >= {d["message_id"] for d in docs if d not in closed_docs} | {
        template["message_id"]
    }


@pytest.mark.parametrize("pace_per_s", [0.0, 2000.0], ids=["unpaced", "paced"])
async def test_a_window_known_closed_fails_its_messages_with_no_call_and_no_lease_left(
    deployment: Deployment, pace_per_s: float
) -> None:
    """A user who last wrote 30 h ago: each of 20 messages FAILED window_closed with no call,
    and its dedup marker is left absent. An unpaced account's send asks for its claim in the
    window read's round trip: refused by the window, the claim is released; a paced one only
    reads the marker there."""
    user = "+5511988887777"
    docs = [message(9, "whatsapp", user, f"late #{k}") for k in range(20)]
    async with platform(deployment, pace_per_s=pace_per_s, windows="enforce") as run:
        redis = aioredis.from_url(deployment.stack.redis_url)
        try:
            account = run.settings.whatsapp.phone_number_id
            window = (
                f"{deployment.redis_prefix}window:whatsapp:{account}:{user_key('whatsapp', user)}"
            )
            wrote_ms = int((time.time() - 30 * 3600) * 1000)
            await redis.set(window, str(wrote_ms), ex=3600)
            await run.send(docs)
            await eventually(lambda: run.ended(docs), timeout_s=30, message="every message")
            markers = [
                await redis.get(
                    f"{deployment.redis_prefix}{marker_key(d['message_id'], 'whatsapp')}"
                )
                for d in docs
            ]
        finally:
            await redis.aclose()
        stats = await run.mock("whatsapp", "/__mock__/stats")
        statuses, dead = await run.statuses(), await run.dead()

    assert {s["new_status"] for s in statuses} == {"FAILED"}
    assert {s["message_id"] for s in statuses} == {d["message_id"] for d in docs}
    assert [d["dlq.error_type"] for d in dead] == ["window_closed"] * len(docs)
    assert stats["requests"] == 0  # no call at all
    assert markers == [None] * len(docs)


async def test_gateway_504s_after_meta_took_the_message_send_nothing_twice(
    deployment: Deployment,
) -> None:
    """10 % of accepted sends answered with a gateway's HTML 504 (the mock took them, and its
    webhooks say so): each waits for the provider's word, none is sent twice, all SENT."""
    docs = [message(n % 50, "whatsapp", f"+5521{n % 50:07d}", f"m{n}") for n in range(500)]
    async with platform(deployment, gateway_timeout_rate=0.1) as run:
        await run.send(docs)
        await eventually(lambda: run.ended(docs), timeout_s=90, message="every message")
        stats = await run.mock("whatsapp", "/__mock__/stats")
        accepted = await run.mock("whatsapp", "/__mock__/sent")
        statuses, dead = await run.statuses(), await run.dead()

    assert stats["gateway_timeout"] >= 20  # the 504s happened
    assert Counter(a["text"] for a in accepted) == Counter(d["payload"]["content"] for d in docs)
    assert {s["message_id"] for s in statuses if s["new_status"] == "FAILED"} == set()
    assert dead == []


@pytest.mark.parametrize(
    ("code", "ends"),
    [(131026, "dead-lettered, replayable"), (130429, "published again, then SENT")],
)
async def test_failures_the_provider_reports_later_end_like_the_same_answer_at_once(
    deployment: Deployment, code: int, ends: str
) -> None:
    """A `failed` status webhook after `sent`: a rejected one is FAILED and its original
    record dead-lettered (replayable to its topic); a throttled one is published again and
    SENT."""
    docs = [message(n % 40, "whatsapp", f"+5531{n % 40:07d}", f"m{n}") for n in range(200)]
    async with platform(deployment, async_failure_rate=0.1, async_failure_code=code) as run:
        await run.send(docs)
        failed_later, dead = 0, []

        async def settled() -> bool:
            """Every message accepted once at least, and (rejected) each failure dead-lettered:
            read together, since the counts move while sends go on."""
            nonlocal failed_later, dead
            stats = await run.mock("whatsapp", "/__mock__/stats")
            texts = {a["text"] for a in await run.mock("whatsapp", "/__mock__/sent")}
            failed_later, dead = int(stats["async_failed"]), await run.dead()
            if len(texts) < len(docs) or not failed_later:
                return False
            if code == 131026:
                return len(dead) == failed_later
            return await run.ended(docs) and await all_sent_again()

        async def all_sent_again() -> bool:
            """Each message's last status is not FAILED (a throttled failure is sent again)."""
            last: dict[str, str] = {}
            for status in await run.statuses():
                last[status["message_id"]] = status["new_status"]
            return all(last.get(d["message_id"]) != "FAILED" for d in docs)

        await eventually(settled, timeout_s=90, message=ends)
        statuses = await run.statuses()
        replayed = None
        if code == 131026:
            replayed = await replay_dlq(
                run.settings, filters=ReplayFilter(limit=None), dry_run=False
            )

    final = {}
    for s in statuses:  # the last word per message
        final[s["message_id"]] = s["new_status"]
    if code == 131026:
        assert len(dead) == failed_later
        assert {d["dlq.error_type"] for d in dead} == {"provider_rejected"}
        assert {d["dlq.original_topic"] for d in dead} == {deployment.topics["message_processing"]}
        originals = {orjson.dumps(d) for d in docs}
        assert all(d["value"] in originals for d in dead)  # the record as it came: replayable
        assert replayed is not None
        assert replayed.replayed == failed_later
        assert sum(1 for v in final.values() if v == "FAILED") == failed_later
    else:
        assert dead == []
        assert {final[d["message_id"]] for d in docs} <= {"SENT", "DELIVERED", "READ"}


async def test_files_go_as_their_type_or_are_refused_before_any_call(
    deployment: Deployment, s3_client: Minio
) -> None:
    """An image, a video over WhatsApp's 16 MB (within Instagram's 25), a PDF and an MP3 to both
    channels: each sent as its type, or refused with no call, as meta/limits.py says (Instagram
    takes AAC, M4A, WAV and MP4 audio, not MP3)."""
    files = {
        "image": ("photo.jpg", "image/jpeg", 300_000),
        "video": ("clip.mp4", "video/mp4", 17 * 1024 * 1024),
        "pdf": ("report.pdf", "application/pdf", 200_000),
        "audio": ("voice.mp3", "audio/mpeg", 400_000),
    }
    ids = {name: uuid.uuid4() for name in files}
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for name, (filename, mime, size) in files.items():
            key = f"files/{ids[name]}/{filename}"
            await s3_client.put_object(deployment.bucket, key, io.BytesIO(b"x" * 64), 64)
            await conn.execute(
                """INSERT INTO files (id, filename, status, storage_key, mime_type, file_size)
                   VALUES ($1, $2, 'COMPLETED', $3, $4, $5)""",
                ids[name], filename, key, mime, size,
            )  # fmt: skip
    finally:
        await conn.close()
    recipients = {"whatsapp": "+5541000000", "instagram": "17840000000001"}
    docs = {
        (name, channel): message(
            n, channel, recipients[channel], "", type="file", file_id=str(ids[name])
        )
        for n, name in enumerate(files)
        for channel in recipients
    }
    async with platform(deployment) as run:
        await run.send(list(docs.values()))
        await eventually(lambda: run.ended(list(docs.values())), timeout_s=60)
        accepted = {c: await run.mock(c, "/__mock__/sent") for c in recipients}
        requests = {c: (await run.mock(c, "/__mock__/stats"))["requests"] for c in recipients}
        dead = await run.dead()

    by_id = {
        a["message_id"]: a for channel in recipients for a in accepted[channel] if a["message_id"]
    }
    kinds = {key: by_id.get(doc["message_id"], {}).get("kind") for key, doc in docs.items()}
    assert kinds == {
        ("image", "whatsapp"): "image",
        ("image", "instagram"): "image",
        ("video", "whatsapp"): None,  # over WhatsApp's 16 MB: refused, no call
        ("video", "instagram"): "video",
        ("pdf", "whatsapp"): "document",
        ("pdf", "instagram"): "file",
        ("audio", "whatsapp"): "audio",
        ("audio", "instagram"): None,  # MP3 is not among Instagram's audio types: no call
    }
    assert requests == {"whatsapp": 3, "instagram": 3}
    reasons = sorted(d["dlq.reason"] for d in dead)
    assert {d["dlq.error_type"] for d in dead} == {"content_limit"}
    assert reasons == [
        "instagram: unsupported media type 'audio/mpeg'; Instagram takes application/pdf, "
        "audio/aac, audio/mp4, audio/wav, audio/wave, audio/x-m4a, audio/x-wav, image/gif, "
        "image/jpeg, image/png, video/mp4, video/ogg, video/quicktime, video/webm, "
        "video/x-msvideo",
        "whatsapp: video is 17.0 MB; WhatsApp takes video/mp4 videos up to 16.0 MB",
    ]
