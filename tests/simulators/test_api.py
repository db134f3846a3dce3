"""The channel mocks speak the providers' HTTP and call back with signed webhooks, as Meta does."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from chat4all_workers.app import App
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
)
from chat4all_workers.meta.payloads import OutboundMessage
from chat4all_workers.meta.signature import SIGNATURE_HEADER, signature_matches
from harness.deployment import DEV_APP_SECRET, Deployment, free_port
from harness.topics import read_topic
from harness.waiting import eventually

pytestmark = pytest.mark.stack


def outbound(recipient: str, n: int = 1) -> OutboundMessage:
    return OutboundMessage(
        message_id=f"00000000-0000-0000-0000-{n:012d}",
        conversation_id=77,
        recipient=recipient,
        kind="text",
        text=f"hello {n}",
    )


@dataclass
class StandIn:
    """An app's webhook endpoint standing in for the webhooks role: it records what the mock
    posts and answers `refuse_first` POSTs with 503 before it takes them."""

    url: str
    refuse_first: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    signed: list[bool] = field(default_factory=list)
    refused: int = 0

    def whatsapp_statuses(self) -> list[str]:
        return [
            status["status"]
            for body in self.bodies
            for status in body["entry"][0]["changes"][0]["value"]["statuses"]
        ]


@contextlib.asynccontextmanager
async def stand_in(*, refuse_first: int = 0) -> AsyncIterator[StandIn]:
    port = free_port()
    endpoint = StandIn(f"http://127.0.0.1:{port}/hook", refuse_first=refuse_first)

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        if endpoint.refused < endpoint.refuse_first:
            endpoint.refused += 1
            return web.Response(status=503)
        endpoint.signed.append(
            signature_matches(DEV_APP_SECRET, raw, request.headers.get(SIGNATURE_HEADER))
        )
        endpoint.bodies.append(orjson.loads(raw))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield endpoint
    finally:
        await runner.cleanup()


async def test_mocks_call_back_the_webhooks_role_with_sent_delivered_and_read(
    deployment: Deployment,
) -> None:
    settings = deployment.settings(mocks={"delivered_after_ms": 20.0, "read_after_ms": 60.0})
    roles = ["whatsapp_mock", "instagram_mock", "webhooks"]
    async with (
        App(settings, roles=roles, serve_http=False) as sup,
        HttpClient() as channel_http,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(10)
        wa = await WhatsAppAdapter(settings.whatsapp, channel_http).send(outbound("+551199"))
        ig = await InstagramAdapter(settings.instagram, channel_http).send(outbound("1784", 2))
        topic = deployment.topics["message_status_updates"]

        async def five_updates() -> bool:
            return len(await read_topic(deployment.stack, topic)) >= 5

        await eventually(five_updates, timeout_s=20, message="the statuses of both")
        async with http.get(f"{settings.whatsapp.base_url}/__mock__/sent") as response:
            sent = await response.json()
        stats = {
            c: await mock_stats(getattr(settings, c).base_url) for c in ("whatsapp", "instagram")
        }

    updates = [orjson.loads(r.value) for r in await read_topic(deployment.stack, topic)]
    assert wa.provider_message_id.startswith("wamid.")
    assert ig.provider_message_id.startswith("mid.")
    assert sorted((u["channel"], u["new_status"]) for u in updates) == [
        ("instagram", "READ"),  # Instagram sends no delivery receipts
        ("instagram", "SENT"),  # its echo of our message
        ("whatsapp", "DELIVERED"),
        ("whatsapp", "READ"),
        ("whatsapp", "SENT"),
    ]
    assert {u["details"]["provider_message_id"] for u in updates if u["channel"] == "whatsapp"} == {
        wa.provider_message_id
    }
    assert {u["message_id"] for u in updates if u["channel"] == "whatsapp"} == {
        outbound("x").message_id
    }
    assert [s["text"] for s in sent] == ["hello 1"]
    assert stats["whatsapp"]["webhooks"] | {"url": ""} == {
        "url": "",
        "signed": True,
        "posted": 3,
        "retried": 0,
        "dropped": 0,
        "pending": 0,
    }
    assert stats["instagram"]["webhooks"]["posted"] == 2


async def test_mock_retries_a_webhook_answered_503_and_keeps_the_order(
    deployment: Deployment,
) -> None:
    async with stand_in(refuse_first=2) as app:
        settings = deployment.settings(
            mocks={
                "delivered_after_ms": 10.0,
                "read_after_ms": 20.0,
                "whatsapp_webhook_url": app.url,
            }
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511"))
            await eventually(lambda: len(app.bodies) == 3, timeout_s=20, message="three webhooks")
            stats = await mock_stats(settings.whatsapp.base_url)

    assert app.refused == 2
    assert app.whatsapp_statuses() == ["sent", "delivered", "read"]  # each after the one before
    assert app.signed == [True, True, True]
    assert (stats["webhooks"]["posted"], stats["webhooks"]["retried"]) == (3, 2)


async def test_mock_flushes_its_pending_webhooks_on_shutdown(deployment: Deployment) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={
                "delivered_after_ms": 60_000.0,  # not due before the mock stops
                "read_after_ms": 120_000.0,
                "whatsapp_webhook_url": app.url,
            }
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            for n in range(20):
                await WhatsAppAdapter(settings.whatsapp, http).send(outbound(f"+55{n}", n))
            await eventually(lambda: len(app.bodies) == 20, message="the sent webhooks")
        # The supervisor has stopped: what was pending went out on the way.

    assert sorted(app.whatsapp_statuses()) == ["delivered"] * 20 + ["read"] * 20 + ["sent"] * 20


async def test_mock_without_an_app_secret_says_so_and_sends_no_webhook(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            whatsapp={"app_secret": ""}, mocks={"whatsapp_webhook_url": app.url}
        )
        with caplog.at_level(logging.WARNING):
            async with (
                App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
                HttpClient() as http,
            ):
                await sup.wait_ready(10)
                await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511"))
                stats = await mock_stats(settings.whatsapp.base_url)

    warnings = [r.getMessage() for r in caplog.records if "no app secret" in r.getMessage()]
    assert len(warnings) == 1
    assert "WHATSAPP_APP_SECRET" in warnings[0]
    assert stats["accepted"] == 1
    assert stats["webhooks"]["signed"] is False
    assert "cannot be signed" in stats["webhooks"]["not_sent"]
    assert app.bodies == []


async def test_mock_with_a_webhook_url_it_cannot_post_to_says_so_and_still_serves(
    deployment: Deployment,
) -> None:
    settings = deployment.settings(mocks={"whatsapp_webhook_url": "webhooks.example/whatsapp"})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511"))
        stats = await mock_stats(settings.whatsapp.base_url)

    assert stats["accepted"] == 1
    assert stats["webhooks"]["not_sent"] == "not an http(s) URL: 'webhooks.example/whatsapp'"
    assert stats["webhooks"]["pending"] == 0


async def test_mock_finishes_a_request_whose_client_gave_up_and_calls_back(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={"latency_ms": 600.0, "whatsapp_webhook_url": app.url},
            whatsapp={"timeout_s": 0.1},
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            with pytest.raises(TransientProviderError) as timed_out:
                await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511"))
            await eventually(lambda: len(app.bodies) >= 1, timeout_s=10, message="its webhook")
            stats = await mock_stats(settings.whatsapp.base_url)

    assert timed_out.value.in_doubt  # written, then no answer in time
    assert stats["accepted"] == 1  # as Meta: the provider took it all the same
    assert app.whatsapp_statuses()[0] == "sent"


async def test_mock_enforces_the_account_rate_as_meta_does(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"whatsapp_rate_per_s": 2.0})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, http)
        await adapter.send(outbound("+1"))
        await adapter.send(outbound("+2"))  # a burst of one second's worth
        with pytest.raises(ThrottledError) as limited:
            await adapter.send(outbound("+3"))
        stats = await mock_stats(settings.whatsapp.base_url)

    assert str(limited.value).startswith("HTTP 400 (130429)")  # as Meta: 400, the code in the body
    assert not limited.value.pair
    assert (stats["accepted"], stats["throttled"]) == (2, 1)


async def test_mock_can_throttle_with_http_429(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"instagram_rate_per_s": 1.0, "throttle_status": 429})
    async with (
        App(settings, roles=["instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        adapter = InstagramAdapter(settings.instagram, http)
        await adapter.send(outbound("1784"))
        with pytest.raises(ThrottledError) as limited:
            await adapter.send(outbound("1785"))

    assert str(limited.value).startswith("HTTP 429 (613)")


async def test_mock_enforces_the_pair_limit_per_recipient(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"pair_burst": 3, "pair_interval_s": 60.0})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, http)
        for n in range(3):
            await adapter.send(outbound("+1", n))
        with pytest.raises(ThrottledError) as limited:
            await adapter.send(outbound("+1", 4))
        await adapter.send(outbound("+2", 5))  # another recipient is not held back
        stats = await mock_stats(settings.whatsapp.base_url)

    assert limited.value.pair
    assert limited.value.provider_code == 131056
    assert (stats["accepted"], stats["pair_throttled"]) == (4, 1)


async def test_mock_token_expires_and_is_restored_at_run_time(deployment: Deployment) -> None:
    settings = deployment.settings()
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as channel_http,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, channel_http)
        await set_token(http, settings.whatsapp.base_url, expired=True)
        with pytest.raises(AccountError) as expired:
            await adapter.send(outbound("+1"))
        await set_token(http, settings.whatsapp.base_url, expired=False)
        sent = await adapter.send(outbound("+1", 2))
        stats = await mock_stats(settings.whatsapp.base_url)

    assert str(expired.value).startswith("HTTP 401 (190/463)")
    assert sent.provider_message_id.startswith("wamid.")
    assert (stats["unauthorized"], stats["accepted"], stats["token_expired"]) == (1, 1, False)


async def test_mock_token_can_start_expired(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"token_expired": True})
    async with (
        App(settings, roles=["instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        with pytest.raises(AccountError, match="Session has expired"):
            await InstagramAdapter(settings.instagram, http).send(outbound("1784"))


async def test_mock_rejects_invalid_recipients_and_over_long_texts(deployment: Deployment) -> None:
    settings = deployment.settings()
    async with (
        App(settings, roles=["whatsapp_mock", "instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        wa = WhatsAppAdapter(settings.whatsapp, http)
        ig = InstagramAdapter(settings.instagram, http)
        with pytest.raises(ProviderRejectedError) as wa_invalid:
            await wa.send(outbound("+invalid"))
        with pytest.raises(ProviderRejectedError) as ig_invalid:
            await ig.send(outbound("invalid-ig"))
        # The adapter checks its limits before sending (the router calls check_content); sent
        # anyway, the mock refuses as Meta would.
        too_long = dataclasses.replace(outbound("1784"), text="é" * 501)
        with pytest.raises(ProviderRejectedError, match="1000 bytes") as ig_long:
            await ig.send(too_long)
        stats = await mock_stats(settings.instagram.base_url)

    assert wa_invalid.value.provider_code == 131026
    assert str(ig_invalid.value).startswith("HTTP 400 (100/2018001)")
    assert ig_long.value.provider_code == 100
    assert stats["rejected"] == 2


async def test_mock_fails_at_the_configured_error_rate(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"error_rate": 1.0})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        with pytest.raises(TransientProviderError, match="HTTP 500 \\(131000\\)"):
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))


async def mock_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/__mock__/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def set_token(http: aiohttp.ClientSession, base_url: str, *, expired: bool) -> None:
    async with http.post(f"{base_url}/__mock__/token", json={"expired": expired}) as response:
        assert response.status == 200
