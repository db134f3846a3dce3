"""The router against real Kafka, Redis, PostgreSQL and S3, sending to a fake provider over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from miniopy_async.api import Minio

from chat4all_workers.app import App
from chat4all_workers.config import CHANNELS
from chat4all_workers.consuming import consume
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import Need, open_resources
from chat4all_workers.role import RoleContext
from chat4all_workers.roles import REGISTRY
from chat4all_workers.roles.router import Router, build_router
from harness.deployment import Deployment
from harness.processes import WorkerProcess
from harness.topics import read_topic
from harness.waiting import eventually
from tests.support import FakeChannelApi, metric_value, produce

pytestmark = pytest.mark.stack


def message(
    conversation: int,
    content: str,
    *,
    channels: Any = ("whatsapp",),
    recipients: dict[str, str] | None = None,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "sender_username": "ana",
        "payload": payload or {"type": "text", "content": content},
        "channels": list(channels) if not isinstance(channels, str) else channels,
        "recipients": recipients
        if recipients is not None
        else {"whatsapp": f"+55{conversation:09d}", "instagram": f"ig{conversation}"},
        "created_at": "2026-11-28T10:30:00Z",
    }


def record(doc: dict[str, Any] | bytes) -> tuple[bytes, bytes]:
    if isinstance(doc, bytes):
        return b"conversation:0", doc
    return f"conversation:{doc['conversation_id']}".encode(), orjson.dumps(doc)


async def route_all(deployment: Deployment, channel: FakeChannelApi, **overrides: Any) -> None:
    settings = deployment.settings(
        whatsapp={"base_url": channel.base_url},
        instagram={"base_url": channel.base_url},
        router={"retry_base_s": 0.01, "retry_cap_s": 0.05, **overrides},
    )
    async with App(settings, roles=["router"], drain=True, serve_http=False) as app:
        await asyncio.wait_for(app.wait(), 120)
    assert [s.restarts_total for s in app.stats()] == [0]


async def statuses(deployment: Deployment) -> list[dict[str, Any]]:
    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    return [orjson.loads(r.value) for r in records]


async def dead_letters(deployment: Deployment) -> list[dict[str, Any]]:
    records = await read_topic(deployment.stack, deployment.topics["dlq"])
    return [
        {"value": r.value, **{k: v.decode() for k, v in r.headers if k.startswith("dlq.")}}
        for r in records
    ]


async def test_router_sends_or_dead_letters_every_record_and_keeps_conversation_order(
    deployment: Deployment,
) -> None:
    valid = [message(c, f"c{c}-m{n}") for n in range(5) for c in range(6)]
    both = message(9, "both channels", channels="all")
    rejected = message(10, "to a bad number", recipients={"whatsapp": "+invalid"})
    flaky = message(11, "flaky then fine", recipients={"whatsapp": "+flaky"})
    half = message(
        12,
        "one fails",
        channels=["whatsapp", "instagram"],
        recipients={"whatsapp": "+5512", "instagram": "invalid-ig"},
    )
    malformed = [
        b"{not json",
        orjson.dumps({"conversation_id": 1}),
        orjson.dumps(message(13, "x", channels=["telegram"])),
    ]
    inputs = [*valid, both, rejected, flaky, half]
    await produce(
        deployment.stack,
        deployment.topics["message_processing"],
        [record(d) for d in inputs] + [record(m) for m in malformed],
    )

    async with FakeChannelApi() as channel:
        channel.fail_first["+flaky"] = 2
        await route_all(deployment, channel)

    sent = channel.texts()
    for c in range(6):
        assert [t for t in sent if t.startswith(f"c{c}-")] == [f"c{c}-m{n}" for n in range(5)]
    assert sorted(channel.texts("instagram")) == ["both channels"]
    assert sent.count("both channels") == 2
    assert "flaky then fine" in sent
    assert "one fails" in channel.texts("whatsapp")
    assert "to a bad number" not in sent
    assert len(sent) == len(set(zip(sent, [c.channel for c in channel.calls], strict=True)))

    dlq = await dead_letters(deployment)
    reasons = {d["value"]: d for d in dlq}
    assert len(dlq) == 5  # 3 malformed + rejected + half
    assert all(d["dlq.source"] == "router" and d["dlq.reason"] for d in dlq)
    assert reasons[b"{not json"]["dlq.error_type"] == "invalid_record"
    assert 'unknown channel "telegram"' in reasons[malformed[2]]["dlq.reason"]
    assert reasons[orjson.dumps(rejected)]["dlq.error_type"] == "provider_rejected"
    assert "instagram" in reasons[orjson.dumps(half)]["dlq.reason"]

    updates = await statuses(deployment)
    by_message = {(u["message_id"], u["channel"]): u["new_status"] for u in updates}
    for doc in valid:
        assert by_message[(doc["message_id"], "whatsapp")] == "SENT"
    assert by_message[(rejected["message_id"], "whatsapp")] == "FAILED"
    assert by_message[(half["message_id"], "whatsapp")] == "SENT"
    assert by_message[(half["message_id"], "instagram")] == "FAILED"
    assert by_message[(flaky["message_id"], "whatsapp")] == "SENT"


async def test_router_dead_letters_after_retries_are_exhausted(deployment: Deployment) -> None:
    doomed = message(1, "never answers well", recipients={"whatsapp": "+down"})
    await produce(deployment.stack, deployment.topics["message_processing"], [record(doomed)])

    async with FakeChannelApi() as channel:
        channel.fail_first["+down"] = 100
        await route_all(deployment, channel)

    (dead,) = await dead_letters(deployment)
    assert dead["dlq.error_type"] == "retries_exhausted"
    assert dead["dlq.attempts"] == "3"
    assert dead["value"] == orjson.dumps(doomed)
    assert channel.calls == []


async def test_router_redelivery_sends_nothing_twice(deployment: Deployment) -> None:
    docs = [message(c, f"once-{c}") for c in range(20)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )

    async with FakeChannelApi() as channel:
        await route_all(deployment, channel)
        # The same records again, as after a crash before the commit: a fresh consumer group.
        again = Deployment(**{**deployment.__dict__, "group": f"{deployment.group}-again"})
        await route_all(again, channel)

    assert sorted(channel.texts()) == sorted(d["payload"]["content"] for d in docs)
    updates = await statuses(deployment)
    assert sum(1 for u in updates if u["new_status"] == "SENT") == 40  # re-emitted, not re-sent


async def test_router_in_dead_letter_mode_survives_kill_9_without_repeating_a_send(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A provider that never calls back (no webhooks), `on_unknown_outcome = "dead_letter"`: a
    send in doubt after the kill is never repeated; it is FAILED and dead-lettered."""
    docs = [message(c, f"k{c}-{n}") for n in range(10) for c in range(40)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    doubt = {"retry_cap_s": 0.5, "on_unknown_outcome": "dead_letter", "in_doubt_window_s": 0.5}
    async with FakeChannelApi(latency_s=0.05) as channel:
        env = deployment.environ(
            whatsapp={"base_url": channel.base_url, "timeout_s": 2.0}, router=doubt
        )
        first = WorkerProcess("router", env, tmp_path / "first.log")
        await first.start()
        try:
            await eventually(lambda: len(channel.calls) >= 60, timeout_s=60, message="sends")
            first.signal(signal.SIGKILL)
            assert await first.wait(10) == -signal.SIGKILL
        finally:
            await first.stop()
        before_restart = len(channel.calls)
        await route_all(deployment, channel, **doubt)

    texts = channel.texts()
    unknown = {
        orjson.loads(d["value"])["message_id"]: orjson.loads(d["value"])["payload"]["content"]
        for d in await dead_letters(deployment)
        if d["dlq.error_type"] == "delivery_unknown"
    }
    failed = {u["message_id"] for u in await statuses(deployment) if u["new_status"] == "FAILED"}
    assert before_restart < len(docs)
    assert len(texts) == len(set(texts)), "a message was sent twice"
    # Every message was sent once, or (killed mid-send) dead-lettered as of unknown outcome,
    # with a FAILED status (no message left PROCESSING).
    assert set(texts) | set(unknown.values()) == {d["payload"]["content"] for d in docs}
    assert failed == set(unknown)
    for c in range(40):
        assert [t for t in texts if t.startswith(f"k{c}-")] == sorted(
            (t for t in texts if t.startswith(f"k{c}-")), key=lambda t: int(t.split("-")[1])
        )


async def test_router_handler_bug_on_one_record_lets_the_other_sends_finish_then_restarts(
    deployment: Deployment,
) -> None:
    """The real router role, composed with a bug on one chosen record (its first delivery):
    the sends in flight finish, nothing is dead-lettered as of unknown outcome, the role is
    restarted and the chosen record is then delivered too."""
    docs = [message(c, f"bug-{c}") for c in range(30)]
    chosen = docs[7]["message_id"]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    entered = 0
    raised = False

    async def run_router_with_a_bug(ctx: RoleContext) -> None:
        router = build_router(ctx)

        async def handle(consumed: ConsumedRecord) -> None:
            nonlocal entered, raised
            entered += 1
            if not raised and orjson.loads(consumed.value or b"{}")["message_id"] == chosen:
                await eventually(lambda: entered >= 20, message="other sends under way")
                raised = True
                raise ZeroDivisionError("a bug in the handler")
            await router.handle(consumed)

        await consume(ctx, topic=ctx.settings.topics.message_processing, handler=handle)

    buggy = dataclasses.replace(REGISTRY["router"], run=run_router_with_a_bug)
    async with FakeChannelApi(latency_s=0.5) as channel:
        settings = deployment.settings(
            whatsapp={"base_url": channel.base_url, "timeout_s": 2.0},
            router={"retry_base_s": 0.01, "retry_cap_s": 0.05},
            supervisor={"backoff_base_s": 0.05, "backoff_cap_s": 0.1},
        )
        async with App(settings, roles=[buggy], drain=True, serve_http=False) as app:
            await asyncio.wait_for(app.wait(), 120)

    texts = channel.texts()
    assert raised
    assert [s.restarts_total for s in app.stats()] == [1]
    assert sorted(texts) == sorted(d["payload"]["content"] for d in docs)  # each once
    assert await dead_letters(deployment) == []  # no delivery_unknown, nothing else either


async def test_router_holds_no_lease_for_a_send_whose_account_paused_during_its_window_read(
    deployment: Deployment,
) -> None:
    """An unpaced account's send asks for its claim with its window read. The account pauses
    while that read is in flight (here: as it returns): the claim is released, so no lease is
    held while the send waits for the pause to end; the probe then sends it, once."""
    doc = message(3, "paused while its window was read")
    key = f"{deployment.redis_prefix}message:dedup:{doc['message_id']}:whatsapp"
    lanes: list[Any] = []

    async def run_router_pausing(ctx: RoleContext) -> None:
        router = build_router(ctx)
        admit = router.windows.admit

        async def admit_then_pause(
            channel: str, account: str, outbound: Any, *, human_agent: bool
        ) -> Any:
            admitted = await admit(channel, account, outbound, human_agent=human_agent)
            (lane,) = [lane for lane in router.accounts.lanes() if lane.channel == channel]
            if not lanes:  # the first send only
                assert not lane.paced  # the case under test: its claim was asked already
                lanes.append(lane)
                lane.pause.pause("paused by the test", label="test", probe=False)
            return admitted

        router.windows.admit = admit_then_pause  # type: ignore[method-assign]
        await consume(ctx, topic=ctx.settings.topics.message_processing, handler=router.handle)

    pausing = dataclasses.replace(REGISTRY["router"], run=run_router_pausing)
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        async with FakeChannelApi(latency_s=0.0) as channel:
            settings = deployment.settings(
                whatsapp={"base_url": channel.base_url, "max_rate_per_s": 0.0, "pair_burst": 0},
                router={"pause_probe_base_s": 2.0},
            )
            async with App(settings, roles=[pausing], serve_http=False) as app:
                await app.wait_ready(30)
                await produce(
                    deployment.stack, deployment.topics["message_processing"], [record(doc)]
                )
                await eventually(
                    lambda: bool(lanes) and lanes[0].pause.held == 1,
                    timeout_s=30,
                    message="the send held by the pause",
                )
                held_marker = await redis.get(key)
                await eventually(
                    lambda: channel.texts() == [doc["payload"]["content"]],
                    timeout_s=30,
                    message="the send goes as the probe",
                )
        marker = await redis.get(key)
    finally:
        await redis.aclose()

    assert held_marker is None  # no lease while it waited
    assert channel.texts() == [doc["payload"]["content"]]  # once
    assert isinstance(marker, bytes)
    assert marker.startswith(b"sent:")


async def test_router_waits_for_a_redis_connection_when_more_sends_are_in_flight(
    deployment: Deployment,
) -> None:
    # More conversations in flight than Redis connections: commands queue for a connection
    # instead of raising MaxConnectionsError (which crashed the role under load).
    docs = [message(c, f"pool-{c}") for c in range(40)]
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )

    async with FakeChannelApi(latency_s=0.02) as channel:
        settings = deployment.settings(
            whatsapp={"base_url": channel.base_url},
            redis={"max_connections": 2},
        )
        async with App(settings, roles=["router"], drain=True, serve_http=False) as app:
            await asyncio.wait_for(app.wait(), 60)

    assert [s.restarts_total for s in app.stats()] == [0]
    assert sorted(channel.texts()) == sorted(d["payload"]["content"] for d in docs)


async def test_router_sends_a_completed_file_and_fails_a_missing_one(
    deployment: Deployment, s3_client: Minio
) -> None:
    ready, missing = uuid.uuid4(), uuid.uuid4()
    key = f"files/{ready}/report.pdf"
    await s3_client.put_object(deployment.bucket, key, io.BytesIO(b"%PDF-1.7"), 8)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        await conn.execute(
            """INSERT INTO files (id, filename, status, storage_key, mime_type)
               VALUES ($1, 'report.pdf', 'COMPLETED', $2, 'application/pdf'),
                      ($3, 'gone.pdf', 'UPLOADING', NULL, NULL)""",
            ready,
            key,
            missing,
        )
    finally:
        await conn.close()
    good = message(1, "", payload={"type": "file", "file_id": str(ready)})
    bad = message(2, "", payload={"type": "file", "file_id": str(missing)})
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(good), record(bad)]
    )

    async with FakeChannelApi() as channel:
        await route_all(deployment, channel)

    (call,) = channel.calls
    assert call.body["type"] == "document"
    assert call.body["document"]["filename"] == "report.pdf"
    assert key in call.body["document"]["link"]
    (dead,) = await dead_letters(deployment)
    assert "not COMPLETED" in dead["dlq.reason"]


# -- at the provider's pace: the real adapters against the mocks ---------------------------------


@dataclass
class MockedRun:
    """What came out of routing against the channel mocks."""

    accepted: dict[str, list[dict[str, Any]]]  # channel -> what its mock accepted, in order
    mock_stats: dict[str, dict[str, Any]]
    statuses: list[dict[str, Any]]  # the router's SENT and FAILED
    dead: list[dict[str, Any]]
    routers: list[App]

    def texts(self, channel: str) -> list[str]:
        return [a["text"] for a in self.accepted[channel]]


def in_order(texts: list[str], docs: list[dict[str, Any]]) -> bool:
    """Each conversation's texts came out in the order they were produced."""
    expected: dict[int, list[str]] = {}
    for doc in docs:
        expected.setdefault(doc["conversation_id"], []).append(doc["payload"]["content"])
    wanted = {t: c for c, ts in expected.items() for t in ts}
    got: dict[int, list[str]] = {}
    for text in texts:
        if text in wanted:
            got.setdefault(wanted[text], []).append(text)
    return all(got.get(c, []) == ts[: len(got.get(c, []))] for c, ts in expected.items())


async def mock_get(settings: Any, channel: str, path: str) -> Any:
    base = getattr(settings, channel).base_url
    async with aiohttp.ClientSession() as http, http.get(f"{base}{path}") as response:
        return await response.json()


async def set_token(settings: Any, channel: str, *, expired: bool) -> None:
    base = getattr(settings, channel).base_url
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/__mock__/token", json={"expired": expired}) as response,
    ):
        assert response.status == 200


async def route_with_mocks(
    deployment: Deployment,
    docs: list[dict[str, Any]],
    *,
    routers: int = 1,
    mocks: dict[str, Any] | None = None,
    during: Callable[[list[App]], Awaitable[None]] | None = None,
    **sections: dict[str, Any],
) -> MockedRun:
    """Produce `docs`, run the mocks and `routers` routers (one consumer group) until every
    record is done, with `during(routers)` running meanwhile. One router drains; several run
    until the mocks accepted every message (drain mode is for one member), then stop."""
    await produce(
        deployment.stack, deployment.topics["message_processing"], [record(d) for d in docs]
    )
    # No webhooks: the statuses seen are the router's alone (tests/roles/test_in_doubt.py
    # runs the mocks calling the webhooks role back).
    channels = {c: {"app_secret": "", **sections.pop(c, {})} for c in CHANNELS}
    settings = deployment.settings(
        mocks=mocks or {},
        **channels,
        **{"router": {"retry_base_s": 0.01, "retry_cap_s": 0.05}, **sections},
    )
    mock_roles = ["whatsapp_mock", "instagram_mock"]
    drain = routers == 1

    async def all_accepted() -> bool:
        got = [len(await mock_get(settings, c, "/__mock__/sent")) for c in CHANNELS]
        return sum(got) >= len(docs)

    async with App(settings, roles=mock_roles, serve_http=False) as mock_sup:
        await mock_sup.wait_ready(10)
        async with contextlib.AsyncExitStack() as stack:
            sups = [
                await stack.enter_async_context(
                    App(settings, roles=["router"], drain=drain, serve_http=False)
                )
                for _ in range(routers)
            ]
            if during is not None:
                await during(sups)
            if drain:
                await asyncio.wait_for(sups[0].wait(), 120)
            else:
                await eventually(all_accepted, timeout_s=120, interval_s=0.2, message="all sent")
        accepted = {c: await mock_get(settings, c, "/__mock__/sent") for c in CHANNELS}
        stats = {c: await mock_get(settings, c, "/__mock__/stats") for c in CHANNELS}
    assert [s.restarts_total for app in sups for s in app.stats()] == [0] * routers
    router_statuses = [u for u in await statuses(deployment) if u["new_status"] in ROUTER_STATUSES]
    return MockedRun(accepted, stats, router_statuses, await dead_letters(deployment), sups)


ROUTER_STATUSES = ("SENT", "FAILED")


async def test_router_paces_two_processes_to_the_account_rate(deployment: Deployment) -> None:
    docs = [message(c, f"p{c}-{n}") for n in range(8) for c in range(25)]

    run = await route_with_mocks(
        deployment,
        docs,
        routers=2,
        mocks={"whatsapp_rate_per_s": 100.0},
        whatsapp={"max_rate_per_s": 100.0},
    )

    texts = run.texts("whatsapp")
    calls = run.mock_stats["whatsapp"]["requests"]
    assert sorted(texts) == sorted(d["payload"]["content"] for d in docs)  # each once
    assert run.dead == []
    assert run.mock_stats["whatsapp"]["throttled"] <= calls * 0.01
    assert in_order(texts, docs)
    accepted_at = [a["accepted_at"] for a in run.accepted["whatsapp"]]
    assert (len(accepted_at) - 1) / (max(accepted_at) - min(accepted_at)) <= 100 * 1.05


async def test_router_sends_sixty_messages_to_one_recipient_within_the_pair_limit(
    deployment: Deployment,
) -> None:
    docs = [message(1, f"one-{n}") for n in range(60)]
    pair = {"pair_burst": 45, "pair_interval_s": 0.05}

    run = await route_with_mocks(deployment, docs, mocks=pair, whatsapp=pair)

    assert run.texts("whatsapp") == [d["payload"]["content"] for d in docs]
    assert run.dead == []
    assert run.mock_stats["whatsapp"]["pair_throttled"] == 0
    assert [u["new_status"] for u in run.statuses] == ["SENT"] * 60


async def test_router_spends_no_attempt_on_throttled_answers(deployment: Deployment) -> None:
    # No pacing in the router, one attempt, a mock at 20/s: throttled answers by the dozen,
    # and still every message goes, none dead-lettered.
    docs = [message(c, f"t{c}-{n}") for n in range(3) for c in range(20)]

    run = await route_with_mocks(
        deployment,
        docs,
        mocks={"whatsapp_rate_per_s": 20.0},
        whatsapp={"max_rate_per_s": 0.0},
        router={"max_attempts": 1, "retry_base_s": 0.01, "retry_cap_s": 0.2},
    )

    assert run.mock_stats["whatsapp"]["throttled"] > 0
    assert sorted(run.texts("whatsapp")) == sorted(d["payload"]["content"] for d in docs)
    assert run.dead == []
    assert in_order(run.texts("whatsapp"), docs)


async def test_router_fails_a_send_still_throttled_at_its_deadline(
    deployment: Deployment,
) -> None:
    first, second = message(1, "goes"), message(1, "never gets a slot")

    run = await route_with_mocks(
        deployment,
        [first, second],
        mocks={"whatsapp_rate_per_s": 0.01},  # one send, then the next in 100 s
        whatsapp={"max_rate_per_s": 0.0},
        router={"throttle_deadline_s": 0.5, "retry_base_s": 0.05, "retry_cap_s": 0.1},
    )

    (dead,) = run.dead
    failed = next(u for u in run.statuses if u["new_status"] == "FAILED")
    assert run.texts("whatsapp") == ["goes"]
    assert dead["value"] == orjson.dumps(second)
    assert (dead["dlq.error_type"], dead["dlq.error_class"]) == ("throttle_deadline", "throttled")
    assert dead["dlq.provider_code"] == "130429"
    assert dead["dlq.reason"].startswith("whatsapp: still throttled after")
    assert failed["details"]["error_class"] == "throttled"
    assert failed["details"]["provider_code"] == 130429


async def test_router_fails_a_rejected_code_and_an_over_long_text_without_retrying(
    deployment: Deployment,
) -> None:
    rejected = message(1, "to nobody", recipients={"whatsapp": "+invalid"})
    too_long = message(2, "x" * 4097)
    ig_too_long = message(3, "é" * 501, channels=["instagram"])
    fine = message(4, "fine")

    run = await route_with_mocks(deployment, [rejected, too_long, ig_too_long, fine])

    dead = {d["value"]: d for d in run.dead}
    failed = {u["message_id"]: u["details"] for u in run.statuses if u["new_status"] == "FAILED"}
    assert run.texts("whatsapp") == ["fine"]
    assert run.mock_stats["whatsapp"]["requests"] == 2  # the rejected once, no retry; fine
    assert run.mock_stats["instagram"]["requests"] == 0  # over its limit: never called
    rejected_dlq = dead[orjson.dumps(rejected)]
    assert rejected_dlq["dlq.error_type"] == "provider_rejected"
    assert (rejected_dlq["dlq.provider_code"], rejected_dlq["dlq.error_class"]) == (
        "131026",
        "rejected",
    )
    assert rejected_dlq["dlq.reason"].startswith("whatsapp: HTTP 400 (131026): ")
    assert failed[rejected["message_id"]]["attempts"] == 1
    assert dead[orjson.dumps(too_long)]["dlq.error_type"] == "content_limit"
    assert "WhatsApp takes at most 4096" in dead[orjson.dumps(too_long)]["dlq.reason"]
    assert "Instagram takes at most 1000" in dead[orjson.dumps(ig_too_long)]["dlq.reason"]
    assert "dlq.provider_code" not in dead[orjson.dumps(too_long)]
    assert failed[too_long["message_id"]] == {
        "reason": "text is 4097 characters; WhatsApp takes at most 4096"
    }


async def test_router_pauses_a_channel_whose_token_expired_and_resumes_by_itself(
    deployment: Deployment,
) -> None:
    wa = [message(c, f"w{c}-{n}") for n in range(5) for c in range(30)]
    ig = [
        message(100 + c, f"i{c}-{n}", channels=["instagram"]) for n in range(5) for c in range(30)
    ]
    docs = [d for pair in zip(wa, ig, strict=True) for d in pair]
    seen: dict[str, Any] = {}

    async def expire_then_restore(routers: list[App]) -> None:
        (router,) = routers
        settings = deployment.settings()

        async def whatsapp_sent(n: int) -> bool:
            return len(await mock_get(settings, "whatsapp", "/__mock__/sent")) >= n

        async def channel_state() -> str:
            _, body = await router.readiness()
            return str(body["accounts"]["whatsapp/default"]["state"])

        await eventually(lambda: whatsapp_sent(20), message="some whatsapp sends")
        await set_token(settings, "whatsapp", expired=True)
        await eventually(lambda: _is(channel_state(), "paused"), message="whatsapp paused")
        paused_at = time.monotonic()
        stats = await mock_get(settings, "whatsapp", "/__mock__/stats")
        seen["unauthorized_at_pause"] = stats["unauthorized"]
        ready, seen["paused_body"] = await router.readiness()
        seen["ready_while_paused"] = ready
        seen["ig_at_pause"] = len(await mock_get(settings, "instagram", "/__mock__/sent"))
        seen["paused_gauge"] = router.metrics.channel_paused.get(
            {"channel": "whatsapp", "account": "default", "reason": "190"}
        )
        await asyncio.sleep(1.5)  # the token stays expired a while: sends held, probes fail
        seen["ig_at_restore"] = len(await mock_get(settings, "instagram", "/__mock__/sent"))
        await set_token(settings, "whatsapp", expired=False)
        restored = time.monotonic()
        seen["paused_for_s"] = restored - paused_at
        await eventually(lambda: _is(channel_state(), "active"), message="whatsapp resumed")
        seen["resumed_after_s"] = time.monotonic() - restored

    run = await route_with_mocks(
        deployment,
        docs,
        during=expire_then_restore,
        kafka={"max_in_flight": 20},  # fewer than the held conversations: held() must work
        whatsapp={"max_rate_per_s": 100.0},
        instagram={"max_rate_per_s": 40.0},
        router={"pause_probe_base_s": 0.1, "pause_probe_cap_s": 0.4},
    )

    paused = seen["paused_body"]["accounts"]["whatsapp/default"]
    unauthorized = run.mock_stats["whatsapp"]["unauthorized"]
    (router,) = run.routers
    assert run.dead == []  # nothing dead-lettered, nothing lost, each sent once:
    assert sorted(run.texts("whatsapp")) == sorted(d["payload"]["content"] for d in wa)
    assert sorted(run.texts("instagram")) == sorted(d["payload"]["content"] for d in ig)
    assert in_order(run.texts("whatsapp"), wa)
    assert seen["ready_while_paused"]  # a paused channel leaves the process ready
    assert paused["reason"].startswith("HTTP 401 (190/463)")
    assert seen["paused_gauge"] == 1
    # The sends already under way when the token expired (at most the 20 records in flight),
    # then only probes: the first at once, then 0.1 s doubling to 0.4 s for as long as it
    # stayed paused (about 1.5 s; longer on a busy machine), one more maybe on its way.
    at_pause = seen["unauthorized_at_pause"]
    assert at_pause <= 20, at_pause
    probes = 4 + math.ceil(seen["paused_for_s"] / 0.4)
    assert unauthorized - at_pause <= probes, (unauthorized, at_pause, seen["paused_for_s"])
    assert (
        metric_value(
            router.metrics.channel_requests,
            {"channel": "whatsapp", "account": "default", "outcome": "paused"},
        )
        == unauthorized
    )
    assert seen["resumed_after_s"] < 2.0
    assert seen["ig_at_restore"] - seen["ig_at_pause"] >= 20  # instagram kept going meanwhile
    assert (
        router.metrics.channel_paused.get(
            {"channel": "whatsapp", "account": "default", "reason": "190"}
        )
        == 0
    )


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


# -- cancellation of a send ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def a_router(settings: Any) -> AsyncIterator[tuple[Router, aioredis.Redis]]:
    """A Router over real resources, outside any engine: its `handle` is awaited (and
    cancelled) by the test itself, as a revocation or a shutdown past its deadline would."""
    needs = frozenset({Need.KAFKA, Need.REDIS, Need.HTTP, Need.POSTGRES, Need.S3, Need.ACCOUNTS})
    async with open_resources(settings, Metrics(), needs) as resources:
        ctx = RoleContext(
            name="router",
            settings=settings,
            resources=resources,
            metrics=resources.metrics,
            stopping=asyncio.Event(),
        )
        yield (
            build_router(ctx),
            resources.redis_client(),
        )


async def one_request(settings: Any) -> bool:
    """The WhatsApp mock has one request (under way or answered)."""
    return int((await mock_get(settings, "whatsapp", "/__mock__/stats"))["requests"]) == 1


def consumed(doc: dict[str, Any]) -> ConsumedRecord:
    key, value = record(doc)
    return ConsumedRecord("message_processing", 0, 0, key, value, (), 0)


async def test_a_send_cancelled_mid_request_waits_for_the_answer_and_marks_it_sent(
    deployment: Deployment,
) -> None:
    doc = message(1, "in flight when cancelled")
    settings = deployment.settings(mocks={"latency_ms": 800.0})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as mocks,
        a_router(settings) as (router, redis),
    ):
        await mocks.wait_ready(10)
        sending = asyncio.ensure_future(router.handle(consumed(doc)))
        await eventually(lambda: one_request(settings), message="the request under way")
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        marker = await redis.get(
            f"{deployment.redis_prefix}message:dedup:{doc['message_id']}:whatsapp"
        )
        accepted = await mock_get(settings, "whatsapp", "/__mock__/sent")

    assert [a["text"] for a in accepted] == ["in flight when cancelled"]
    assert isinstance(marker, bytes)
    assert marker.startswith(b"sent:wamid.")  # a redelivery sends nothing


async def test_a_send_cancelled_twice_mid_request_leaves_it_in_doubt_for_the_next_owner(
    deployment: Deployment,
) -> None:
    doc = message(1, "cancelled twice while in flight")
    settings = deployment.settings(mocks={"latency_ms": 800.0})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as mocks,
        a_router(settings) as (router, redis),
    ):
        await mocks.wait_ready(10)
        sending = asyncio.ensure_future(router.handle(consumed(doc)))
        await eventually(lambda: one_request(settings), message="the request under way")
        sending.cancel()
        await asyncio.sleep(0)  # one loop step: the task takes the cancel, finishes the request
        sending.cancel()  # ... and is cancelled again while it waits for the answer
        with pytest.raises(asyncio.CancelledError):
            await sending
        marker = await redis.get(
            f"{deployment.redis_prefix}message:dedup:{doc['message_id']}:whatsapp"
        )

    assert isinstance(marker, bytes)
    assert marker.startswith(b"lease:")
    assert marker.endswith(b":0")  # expired now: the next owner waits for the provider's word
    handed_back = {"channel": "whatsapp", "resolution": "handed_back"}
    assert metric_value(router.ctx.metrics.router_in_doubt, handed_back) == 1


async def test_a_send_cancelled_between_attempts_releases_its_lease_at_once(
    deployment: Deployment,
) -> None:
    doc = message(1, "cancelled in its backoff")
    # Backoff is full jitter (a delay in [0, 30 s]): a retry may come at once, so the send
    # never runs out of attempts here, and "answered 500" means at least once.
    settings = deployment.settings(
        mocks={"error_rate": 1.0, "error_code": 131057},
        router={"retry_base_s": 30.0, "retry_cap_s": 30.0, "max_attempts": 1000},
    )
    key = f"{deployment.redis_prefix}message:dedup:{doc['message_id']}:whatsapp"
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as mocks,
        a_router(settings) as (router, redis),
    ):
        await mocks.wait_ready(10)
        sending = asyncio.ensure_future(router.handle(consumed(doc)))

        async def failed_once() -> bool:
            return int((await mock_get(settings, "whatsapp", "/__mock__/stats"))["failed"]) >= 1

        await eventually(failed_once, message="the first attempt answered 500")
        assert await redis.get(key) is not None  # the lease, while it waits to retry
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        marker = await redis.get(key)

    assert marker is None  # released: the next owner sends it, no "outcome unknown"
