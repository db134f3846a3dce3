"""The webhooks role over real HTTP, producing to real Kafka, with Redis for the Instagram index."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from chat4all_workers.kafka.breaker import BreakerState
from chat4all_workers.meta.events import StatusError as ProviderError
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_notification,
    instagram_read,
    whatsapp_notification,
    whatsapp_status,
)
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from chat4all_workers.roles.webhooks import WebhookSettings
from harness.deployment import Deployment
from harness.topics import read_topic
from harness.waiting import eventually
from tests.roles.durable_support import KafkaProxy, TcpProxy, wait_for_records
from tests.roles.webhook_support import (
    IG_SECRET,
    IG_TOKEN,
    IG_USER_ID,
    PHONE_NUMBER_ID,
    WA_SECRET,
    WA_TOKEN,
    running,
    webhook_settings,
)
from tests.support import metric_value

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

AT_S = 1_764_000_000


def callback(message_id: str, conversation_id: int = 42) -> str:
    return orjson.dumps({"message_id": message_id, "conversation_id": conversation_id}).decode()


def status(message_id: str, wa_status: str, wamid: str = "wamid.1", **kw: Any) -> dict[str, Any]:
    return whatsapp_status(
        wamid,
        wa_status,
        at_s=AT_S,
        recipient_id="5511999990000",
        callback_data=callback(message_id),
        **kw,
    )


def statuses_body(*items: dict[str, Any], phone: str = PHONE_NUMBER_ID) -> dict[str, Any]:
    return whatsapp_notification(phone_number_id=phone, statuses=items)


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def signed_head(body: bytes, *, content_length: int | None = None) -> bytes:
    """The head of a signed WhatsApp POST of `body`, for tests that write the body themselves."""
    length = len(body) if content_length is None else content_length
    return (
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{SIGNATURE_HEADER}: {sign(WA_SECRET, body)}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# -- verification ---------------------------------------------------------------------------------


async def test_webhooks_verification_with_the_right_token_echoes_the_challenge(
    deployment: Deployment,
) -> None:
    async with running(webhook_settings(deployment)) as endpoint:
        answers = []
        for channel, token in (("whatsapp", WA_TOKEN), ("instagram", IG_TOKEN)):
            query = {
                "hub.mode": "subscribe",
                "hub.verify_token": token,
                "hub.challenge": "1158201444",
            }
            async with endpoint.http.get(endpoint.url(channel), params=query) as response:
                answers.append((response.status, response.content_type, await response.text()))

    assert answers == [(200, "text/plain", "1158201444")] * 2


async def test_webhooks_verification_with_a_wrong_token_or_mode_is_403(
    deployment: Deployment,
) -> None:
    queries = [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"},
        {
            "hub.mode": "subscribe",
            "hub.verify_token": IG_TOKEN,
            "hub.challenge": "1",
        },  # other channel's
        {"hub.mode": "unsubscribe", "hub.verify_token": WA_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": WA_TOKEN, "hub.challenge": "1"},
        {},
    ]
    async with running(webhook_settings(deployment)) as endpoint:
        statuses = []
        for query in queries:
            async with endpoint.http.get(endpoint.url("whatsapp"), params=query) as response:
                statuses.append((response.status, await response.text()))
        refused = metric_value(
            endpoint.supervisor.metrics.webhook_requests,
            {"channel": "whatsapp", "outcome": "verify_refused"},
        )

    assert statuses == [(403, "forbidden")] * len(queries)
    assert refused == len(queries)


# -- signatures -----------------------------------------------------------------------------------


async def test_webhooks_refuse_missing_and_wrong_signatures_and_produce_nothing(
    deployment: Deployment,
) -> None:
    body = orjson.dumps(statuses_body(status(str(uuid.uuid4()), "delivered")))
    good = sign(WA_SECRET, body)
    wrong = [
        "",  # no header at all
        "sha256=" + "0" * 64,
        sign(IG_SECRET, body),  # the other app's secret
        sign("not-the-secret", body),
        good.replace("sha256=", "sha1="),
        good[:-1],
        sign(WA_SECRET, body + b" "),  # signed other bytes
    ]
    async with running(webhook_settings(deployment)) as endpoint:
        refused = [(await endpoint.post("whatsapp", body, signature=s))[0] for s in wrong]
        accepted, _ = await endpoint.post("whatsapp", body, signature=good)
        bad = metric_value(
            endpoint.supervisor.metrics.webhook_requests,
            {"channel": "whatsapp", "outcome": "bad_signature"},
        )

    produced = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    assert refused == [401] * len(wrong)
    assert bad == len(wrong)
    assert (accepted, len(produced)) == (200, 1)  # only the signed one


# -- WhatsApp statuses ----------------------------------------------------------------------------


async def test_webhooks_whatsapp_statuses_become_status_updates(deployment: Deployment) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    failure = ProviderError(131026, "Message undeliverable", "Unable to deliver message")
    body = whatsapp_notification(
        phone_number_id=PHONE_NUMBER_ID,
        statuses=[
            status(first, "sent"),
            status(first, "delivered"),
            status(first, "read"),
            status(second, "failed", wamid="wamid.2", error=failure),
        ],
    )
    async with running(webhook_settings(deployment)) as endpoint:
        answer = await endpoint.post("whatsapp", body)

    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    by_status = {(v["message_id"], v["new_status"]): v for v in values(records)}
    assert answer == (
        200,
        {"statuses": 4, "inbound": 0, "ignored": 0, "dead_lettered": False, "parked": False},
    )
    assert set(by_status) == {
        (first, "SENT"),
        (first, "DELIVERED"),
        (first, "READ"),
        (second, "FAILED"),
    }
    assert {r.key for r in records} == {b"conversation:42"}
    assert by_status[first, "READ"] == {
        "message_id": first,
        "conversation_id": 42,
        "channel": "whatsapp",
        "new_status": "READ",
        "timestamp": "2025-11-24T16:00:00+00:00",
        "details": {"provider_message_id": "wamid.1"},
    }
    assert by_status[second, "FAILED"]["details"] == {
        "provider_message_id": "wamid.2",
        "provider_code": 131026,
        "title": "Message undeliverable",
        "reason": "whatsapp: (131026) Message undeliverable: Unable to deliver message",
    }


async def test_webhooks_record_the_providers_word_in_the_routers_dedup_markers(
    deployment: Deployment,
) -> None:
    in_doubt, given_up, known = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

    def key(message_id: str) -> str:
        return f"{deployment.redis_prefix}message:dedup:{message_id}:whatsapp"

    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        await redis.set(key(in_doubt), "lease:abc1:1.000", ex=600)  # a router killed mid-send
        await redis.set(key(given_up), "failed:retries_exhausted:message_processing:0:7", ex=600)
        await redis.set(key(known), "sent:wamid.K", ex=600)
        body = statuses_body(
            status(in_doubt, "sent", wamid="wamid.D"),
            status(in_doubt, "delivered", wamid="wamid.D"),  # one verdict per message
            status(given_up, "delivered", wamid="wamid.G"),  # delivered after all: it had it
            status(known, "read", wamid="wamid.K"),
        )
        async with running(webhook_settings(deployment)) as endpoint:
            code, _ = await endpoint.post("whatsapp", body)
            verdicts = endpoint.supervisor.metrics.webhook_verdicts
            counted = {
                marker: metric_value(verdicts, {"channel": "whatsapp", "marker": marker})
                for marker in ("lease", "failed", "sent")
            }
        markers = [await redis.get(key(m)) for m in (in_doubt, given_up, known)]
        ttl = await redis.ttl(key(in_doubt))
    finally:
        await redis.aclose()

    assert code == 200
    assert markers == [b"sent:wamid.D", b"sent:wamid.G", b"sent:wamid.K"]
    assert 0 < ttl <= 600  # the marker's TTL is kept
    assert counted == {"lease": 1.0, "failed": 1.0, "sent": 1.0}


async def test_webhooks_concurrent_statuses_each_record_their_word_and_get_their_answer(
    deployment: Deployment,
) -> None:
    """Many POSTs at once, most of them statuses only (stored together, in batches of a loop
    iteration), one a failure (stored on its own): each is answered as if alone, each request's
    word counted in the markers, every record produced once."""
    message = str(uuid.uuid4())
    failed = str(uuid.uuid4())
    marker = f"{deployment.redis_prefix}message:dedup:{message}:whatsapp"
    redis = aioredis.from_url(deployment.stack.redis_url)
    failure = ProviderError(131026, "Message undeliverable", "Unable to deliver message")
    try:
        await redis.set(marker, "lease:abc1:1.000", ex=600)  # a router killed mid-send
        async with running(webhook_settings(deployment)) as endpoint:
            answers = await asyncio.gather(
                *(
                    endpoint.post("whatsapp", statuses_body(status(message, "read")))
                    for _ in range(24)
                ),
                endpoint.post(
                    "whatsapp",
                    statuses_body(status(failed, "failed", wamid="wamid.F", error=failure)),
                ),
            )
            verdicts = endpoint.supervisor.metrics.webhook_verdicts
            counted = {
                m: metric_value(verdicts, {"channel": "whatsapp", "marker": m})
                for m in ("lease", "sent")
            }
        held = await redis.get(marker)
    finally:
        await redis.aclose()
    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])

    summary = {"statuses": 1, "inbound": 0, "ignored": 0, "dead_lettered": False, "parked": False}
    assert answers == [(200, summary)] * 25
    assert held == b"sent:wamid.1"
    assert counted == {"lease": 1.0, "sent": 23.0}  # the first took the lease's place
    by_message = sorted((v["message_id"], v["new_status"]) for v in values(records))
    assert by_message == sorted([(message, "READ")] * 24 + [(failed, "FAILED")])


async def test_webhooks_ignore_foreign_and_unknown_statuses_counting_each_reason(
    deployment: Deployment,
) -> None:
    ours = str(uuid.uuid4())
    bodies = [
        statuses_body(status(ours, "sent"), phone="9999"),  # another phone number of the app
        statuses_body(whatsapp_status("wamid.3", "sent", at_s=AT_S, recipient_id="55")),
        statuses_body(
            whatsapp_status("wamid.4", "sent", at_s=AT_S, recipient_id="55", callback_data="crm-77")
        ),
        statuses_body(status(ours, "deleted")),
    ]
    async with running(webhook_settings(deployment)) as endpoint:
        answers = [(await endpoint.post("whatsapp", body))[0] for body in bodies]
        events = endpoint.supervisor.metrics.webhook_events
        counted = {
            reason: metric_value(
                events, {"channel": "whatsapp", "kind": "status", "outcome": reason}
            )
            for reason in (
                "foreign_account",
                "no_callback_data",
                "bad_callback_data",
                "unknown_status",
            )
        }

    assert answers == [200] * 4
    assert counted == dict.fromkeys(counted, 1.0)
    assert await read_topic(deployment.stack, deployment.topics["message_status_updates"]) == []


# -- Instagram ------------------------------------------------------------------------------------


async def test_webhooks_instagram_read_receipt_finds_the_message_through_the_index(
    deployment: Deployment,
) -> None:
    message_id = str(uuid.uuid4())
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        # What the router writes when Instagram's Send API answers with the mid (phase 2).
        await redis.set(
            f"{deployment.redis_prefix}message:provider:instagram:mid.known",
            callback(message_id, 7),
            ex=60,
        )
    finally:
        await redis.aclose()
    receipts = [
        instagram_read(mid, customer="igsid-1", account_id=IG_USER_ID, at_ms=AT_S * 1000)
        for mid in ("mid.known", "mid.unknown")
    ]
    async with running(webhook_settings(deployment)) as endpoint:
        status_code, summary = await endpoint.post(
            "instagram", instagram_notification(account_id=IG_USER_ID, events=receipts)
        )
        unknown = metric_value(
            endpoint.supervisor.metrics.webhook_events,
            {"channel": "instagram", "kind": "read", "outcome": "unknown_message"},
        )

    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    assert (status_code, summary["statuses"], summary["ignored"], unknown) == (200, 1, 1, 1.0)
    assert [
        (r.key, v["message_id"], v["new_status"], v["details"])
        for r, v in zip(records, values(records), strict=True)
    ] == [(b"conversation:7", message_id, "READ", {"provider_message_id": "mid.known"})]


async def test_webhooks_instagram_echo_with_our_metadata_is_sent_and_indexes_the_mid(
    deployment: Deployment,
) -> None:
    message_id = str(uuid.uuid4())
    echo = instagram_echo(
        "mid.echoed",
        customer="igsid-1",
        account_id=IG_USER_ID,
        at_ms=AT_S * 1000,
        metadata=callback(message_id, 9),
        text="hello",
    )
    read = instagram_read(
        "mid.echoed", customer="igsid-1", account_id=IG_USER_ID, at_ms=AT_S * 1000 + 5
    )
    async with running(webhook_settings(deployment)) as endpoint:
        await endpoint.post(
            "instagram", instagram_notification(account_id=IG_USER_ID, events=[echo])
        )
        await endpoint.post(
            "instagram", instagram_notification(account_id=IG_USER_ID, events=[read])
        )

    records = values(
        await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    )
    assert [(v["message_id"], v["conversation_id"], v["new_status"]) for v in records] == [
        (message_id, 9, "SENT"),
        (message_id, 9, "READ"),
    ]


# -- inbound messages -----------------------------------------------------------------------------


async def test_webhooks_users_messages_go_to_inbound_messages_keyed_by_sender(
    deployment: Deployment,
) -> None:
    whatsapp = whatsapp_notification(
        phone_number_id=PHONE_NUMBER_ID,
        contacts=[{"profile": {"name": "Ana"}, "wa_id": "5511999990000"}],
        messages=[
            {
                "from": "5511999990000",
                "id": "wamid.in1",
                "timestamp": str(AT_S),
                "type": "text",
                "text": {"body": "oi"},
            }
        ],
    )
    instagram = instagram_notification(
        account_id=IG_USER_ID,
        events=[
            {
                "sender": {"id": "igsid-1"},
                "recipient": {"id": IG_USER_ID},
                "timestamp": AT_S * 1000,
                "message": {"mid": "mid.in1", "text": "hello"},
            }
        ],
    )
    async with running(webhook_settings(deployment)) as endpoint:
        answers = [
            await endpoint.post("whatsapp", whatsapp),
            await endpoint.post("instagram", instagram),
        ]

    records = await read_topic(deployment.stack, deployment.topics["inbound_messages"])
    by_channel = {v["channel"]: (r.key, v) for r, v in zip(records, values(records), strict=True)}
    assert [a[1]["inbound"] for a in answers] == [1, 1]
    key, wa = by_channel["whatsapp"]
    assert key == b"whatsapp:5511999990000"
    assert {
        k: wa[k]
        for k in ("provider_message_id", "account_id", "sender", "sender_name", "type", "text")
    } == {
        "provider_message_id": "wamid.in1",
        "account_id": PHONE_NUMBER_ID,
        "sender": "5511999990000",
        "sender_name": "Ana",
        "type": "text",
        "text": "oi",
    }
    key, ig = by_channel["instagram"]
    assert (key, ig["sender"], ig["text"], ig["timestamp"]) == (
        b"instagram:igsid-1",
        "igsid-1",
        "hello",
        "2025-11-24T16:00:00+00:00",
    )


# -- what is refused ------------------------------------------------------------------------------


async def test_webhooks_signed_bodies_that_cannot_be_read_are_dead_lettered_and_answered_200(
    deployment: Deployment,
) -> None:
    ok = str(uuid.uuid4())
    bodies = [
        b"{not json",
        orjson.dumps({"object": "page", "entry": []}),
        orjson.dumps(statuses_body(status(ok, "delivered"), {"status": "read", "timestamp": "1"})),
    ]
    async with running(webhook_settings(deployment)) as endpoint:
        answers = [await endpoint.post("whatsapp", body) for body in bodies]

    dead = await wait_for_records(deployment.stack, deployment.topics["dlq"], expect=3)
    produced = values(
        await read_topic(deployment.stack, deployment.topics["message_status_updates"])
    )
    assert [(code, summary["dead_lettered"]) for code, summary in answers] == [(200, True)] * 3
    assert [value for _, _, value, _ in dead] == bodies  # the raw bytes, as Meta sent them
    assert {h["dlq.source"] for *_, h in dead} == {b"webhooks"}
    assert {h["dlq.error_type"] for *_, h in dead} == {b"invalid_record"}
    assert (
        dead[1][3]["dlq.reason"] == b"whatsapp: object is 'page', not 'whatsapp_business_account'"
    )
    assert (
        dead[2][3]["dlq.reason"]
        == b"whatsapp: entry[0].changes[0].value.statuses[1].id is missing or not an id"
    )
    assert [(v["message_id"], v["new_status"]) for v in produced] == [
        (ok, "DELIVERED")
    ]  # the rest is kept


async def test_webhooks_body_over_the_limit_is_413_without_keeping_it(
    deployment: Deployment,
) -> None:
    settings = webhook_settings(deployment, webhooks={"max_body_bytes": 2000})
    big = orjson.dumps(statuses_body(*[status(str(uuid.uuid4()), "read")] * 20))
    assert len(big) > 2000

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    async with running(settings) as endpoint:
        declared, _ = await endpoint.post("whatsapp", big)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(WA_SECRET, big)}
        async with endpoint.http.post(
            endpoint.url("whatsapp"), data=chunks(), headers=headers
        ) as response:
            streamed = response.status
        small, _ = await endpoint.post("whatsapp", statuses_body(status(str(uuid.uuid4()), "read")))
        # 5 MB announced, 100 bytes sent: answered at once, closed after at most 2 s of lingering.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", settings.section(WebhookSettings).port
        )
        writer.write(signed_head(b"", content_length=5_000_000) + b" " * 100)
        await writer.drain()
        raw = await reader.readline()
        async with asyncio.timeout(5):
            await reader.read()  # EOF: the server closed the connection
        writer.close()

    assert (declared, streamed, small) == (413, 413, 200)
    assert raw.startswith(b"HTTP/1.1 413")


async def test_webhooks_wrong_content_type_or_method_is_a_clean_4xx(deployment: Deployment) -> None:
    body = statuses_body(status(str(uuid.uuid4()), "read"))
    async with running(webhook_settings(deployment)) as endpoint:
        form, _ = await endpoint.post(
            "whatsapp", body, content_type="application/x-www-form-urlencoded"
        )
        async with endpoint.http.put(endpoint.url("whatsapp"), data=b"{}") as response:
            put = response.status
        async with endpoint.http.post(
            f"{endpoint.base_url}/webhooks/telegram", data=b"{}"
        ) as response:
            elsewhere = response.status

    assert (form, put, elsewhere) == (415, 405, 404)
    assert await read_topic(deployment.stack, deployment.topics["message_status_updates"]) == []


async def test_webhooks_channel_without_app_secret_refuses_posts_and_says_so_once(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    settings = webhook_settings(deployment, instagram={"app_secret": ""})
    receipt = instagram_read("mid.1", customer="c", account_id=IG_USER_ID, at_ms=AT_S * 1000)
    with caplog.at_level(logging.WARNING, logger="chat4all_workers.roles.webhooks"):
        async with running(settings) as endpoint:
            refused, _ = await endpoint.post(
                "instagram",
                instagram_notification(account_id=IG_USER_ID, events=[receipt]),
                secret="x",
            )
            accepted, _ = await endpoint.post(
                "whatsapp", statuses_body(status(str(uuid.uuid4()), "sent"))
            )

    startup = [r.getMessage() for r in caplog.records if "app's secret" in r.getMessage()]
    assert (refused, accepted) == (403, 200)
    assert startup == [
        "webhooks: POSTs refused (403) for instagram: no Meta app's secret (set "
        "INSTAGRAM_APP_SECRET, or add an app: chat4all-workers accounts app-add)"
    ]
    assert all(WA_SECRET not in r.getMessage() for r in caplog.records)


async def test_webhooks_answer_503_above_the_concurrent_requests_limit(
    deployment: Deployment,
) -> None:
    settings = webhook_settings(deployment, webhooks={"max_concurrent_requests": 1})
    body = orjson.dumps(statuses_body(status(str(uuid.uuid4()), "read")))
    async with running(settings) as endpoint:
        # A POST whose body is still arriving holds the one slot.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", settings.section(WebhookSettings).port
        )
        writer.write(signed_head(body) + body[:10])
        await writer.drain()
        await eventually(lambda: endpoint.supervisor.published()["webhooks"]["in_flight"] == 1)
        shed, _ = await endpoint.post("whatsapp", body)
        writer.write(body[10:])  # the held request completes normally
        await writer.drain()
        held = await reader.readline()
        writer.close()
        await writer.wait_closed()

    assert shed == 503
    assert held.startswith(b"HTTP/1.1 200")


async def test_webhooks_answer_408_to_a_body_slower_than_the_timeout(
    deployment: Deployment,
) -> None:
    settings = webhook_settings(deployment, webhooks={"body_timeout_s": 0.3})
    body = orjson.dumps(statuses_body(status(str(uuid.uuid4()), "read")))
    async with running(settings) as endpoint:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", settings.section(WebhookSettings).port
        )
        writer.write(signed_head(body) + body[:10])  # and the rest never comes
        await writer.drain()
        answer = await reader.readline()
        closed = await reader.read()  # the server closes the connection after it
        writer.close()
        slots = endpoint.supervisor.published()["webhooks"]["in_flight"]

    assert answer.startswith(b"HTTP/1.1 408")
    assert closed.endswith(b'{"error":"the body took too long"}')
    assert slots == 0


# -- Kafka unreachable ----------------------------------------------------------------------------


async def test_webhooks_answer_503_while_kafka_fails_and_200_parked_once_the_breaker_opened(
    deployment: Deployment,
) -> None:
    """The producer reaches Kafka only through a proxy the test stops (durable_support.KafkaProxy):
    while sends fail the answer is 503 (Meta retries); once the breaker is open, records are
    parked in the Redis fallback list at once and the answer is 200."""
    proxy = KafkaProxy(deployment.stack.kafka_bootstrap)
    await proxy.start()
    settings = webhook_settings(
        deployment,
        kafka={"bootstrap_servers": proxy.address, "request_timeout_ms": 2000},
        breaker={"failure_threshold": 2, "cooldown_s": 60.0, "ack_timeout_s": 1.0},
        webhooks={"store_timeout_s": 1.5},
    )
    ids = [str(uuid.uuid4()) for _ in range(4)]
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        async with running(settings) as endpoint:
            before, _ = await endpoint.post("whatsapp", statuses_body(status(ids[0], "read")))
            await proxy.stop()
            failing = [
                (await endpoint.post("whatsapp", statuses_body(status(i, "read"))))[0]
                for i in ids[1:3]
            ]
            assert endpoint.supervisor.resources is not None
            breaker = endpoint.supervisor.resources.kafka().breaker.state
            parked = await endpoint.post("whatsapp", statuses_body(status(ids[3], "read")))
            await proxy.start()  # the producer drains what it holds before the process exits
        queue = await redis.lrange(f"{deployment.redis_prefix}fallback:message_queue", 0, -1)
    finally:
        await redis.aclose()
        await proxy.stop()

    assert before == 200
    assert failing == [503, 503]
    assert breaker is BreakerState.OPEN
    assert (parked[0], parked[1]["parked"]) == (200, True)
    (envelope,) = [orjson.loads(item) for item in queue]
    assert envelope["topic"] == deployment.topics["message_status_updates"]
    assert (envelope["value"]["message_id"], envelope["value"]["new_status"]) == (ids[3], "READ")


async def test_webhooks_answer_503_to_statuses_while_redis_is_away_and_store_them_after(
    deployment: Deployment,
) -> None:
    """The provider's word goes to Redis before any record: with Redis unreachable, statuses
    posted at once (stored together) are each answered 503 and nothing is produced; Meta's retry
    once Redis is back is stored."""
    proxy = TcpProxy(urlsplit(deployment.stack.redis_url).netloc)
    await proxy.start()
    redis_url = urlsplit(deployment.stack.redis_url)._replace(netloc=f"127.0.0.1:{proxy.port}")
    settings = webhook_settings(deployment, redis={"url": urlunsplit(redis_url)})
    ids = [str(uuid.uuid4()) for _ in range(4)]
    try:
        async with running(settings) as endpoint:
            await proxy.stop()
            away = await asyncio.gather(
                *(endpoint.post("whatsapp", statuses_body(status(i, "read"))) for i in ids)
            )
            produced_while_away = await read_topic(
                deployment.stack, deployment.topics["message_status_updates"]
            )
            await proxy.start()
            again = [
                (await endpoint.post("whatsapp", statuses_body(status(i, "read"))))[0] for i in ids
            ]
    finally:
        await proxy.stop()
    records = await read_topic(deployment.stack, deployment.topics["message_status_updates"])

    assert [code for code, _ in away] == [503] * 4
    assert produced_while_away == []
    assert again == [200] * 4
    assert sorted(v["message_id"] for v in values(records)) == sorted(ids)


async def test_webhooks_readiness_publishes_the_listening_address(deployment: Deployment) -> None:
    settings = webhook_settings(deployment, whatsapp={"app_secret": ""})
    async with running(settings) as endpoint:
        section = endpoint.supervisor.published()["webhooks"]

    assert section["listening"] == f"127.0.0.1:{settings.section(WebhookSettings).port}"
    assert section["accepting"] == {"whatsapp": False, "instagram": True}


async def test_webhooks_session_survives_keep_alive_after_a_refusal(deployment: Deployment) -> None:
    """A 413 closes its connection (the body was not read); the client's next request works."""
    settings = webhook_settings(deployment, webhooks={"max_body_bytes": 100})
    connector = aiohttp.TCPConnector(limit=1)
    async with running(settings) as endpoint, aiohttp.ClientSession(connector=connector) as http:
        endpoint.http = http
        big, _ = await endpoint.post("whatsapp", b"x" * 1000)
        small, _ = await endpoint.post("whatsapp", b"{}")

    assert (big, small) == (413, 200)
