"""The channel mocks speak the providers' HTTP and report DELIVERED and READ like webhooks."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import orjson
import pytest

from chat4all_workers.channels.base import OutboundMessage
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
)
from chat4all_workers.supervisor import Supervisor
from tests.support import Deployment, eventually, read_topic

pytestmark = pytest.mark.stack


def outbound(recipient: str, n: int = 1) -> OutboundMessage:
    return OutboundMessage(
        message_id=f"00000000-0000-0000-0000-{n:012d}",
        conversation_id=77,
        recipient=recipient,
        kind="text",
        text=f"hello {n}",
    )


async def test_mocks_accept_sends_and_emit_delivered_then_read(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"delivered_after_ms": 20.0, "read_after_ms": 60.0})
    async with (
        Supervisor(settings, roles=["whatsapp_mock", "instagram_mock"], serve_http=False) as sup,
        HttpClient() as channel_http,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(10)
        wa = await WhatsAppAdapter(settings.whatsapp, channel_http).send(outbound("+551199"))
        ig = await InstagramAdapter(settings.instagram, channel_http).send(outbound("1784", 2))
        topic = deployment.topics["message_status_updates"]

        async def four_updates() -> bool:
            return len(await read_topic(deployment.stack, topic)) >= 4

        await eventually(four_updates, timeout_s=20, message="DELIVERED and READ for both")
        async with http.get(f"{settings.whatsapp.base_url}/__mock__/sent") as response:
            sent = await response.json()

    updates = [orjson.loads(r.value) for r in await read_topic(deployment.stack, topic)]
    assert wa.provider_message_id.startswith("wamid.")
    assert ig.provider_message_id.startswith("mid.")
    assert sorted((u["channel"], u["new_status"]) for u in updates) == [
        ("instagram", "DELIVERED"),
        ("instagram", "READ"),
        ("whatsapp", "DELIVERED"),
        ("whatsapp", "READ"),
    ]
    assert {u["message_id"] for u in updates if u["channel"] == "whatsapp"} == {
        outbound("x").message_id
    }
    assert [s["text"] for s in sent] == ["hello 1"]


async def test_mock_enforces_the_account_rate_as_meta_does(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"whatsapp_rate_per_s": 2.0})
    async with (
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
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
        Supervisor(settings, roles=["instagram_mock"], serve_http=False) as sup,
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
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
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
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
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
        Supervisor(settings, roles=["instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        with pytest.raises(AccountError, match="Session has expired"):
            await InstagramAdapter(settings.instagram, http).send(outbound("1784"))


async def test_mock_rejects_invalid_recipients_and_over_long_texts(deployment: Deployment) -> None:
    settings = deployment.settings()
    async with (
        Supervisor(settings, roles=["whatsapp_mock", "instagram_mock"], serve_http=False) as sup,
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
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
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
