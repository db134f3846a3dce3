"""The channel mocks speak the providers' HTTP and report DELIVERED and READ like webhooks."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from chat4all_workers.channels.base import OutboundMessage
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.errors import ProviderRejectedError, RetryableError
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


async def test_mock_rejects_invalid_recipients_and_rate_limits(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"rate_limit_per_s": 2.0})
    async with (
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, http)
        with pytest.raises(ProviderRejectedError, match="not a valid user"):
            await adapter.send(outbound("+invalid"))
        await adapter.send(outbound("+1"))
        with pytest.raises(RetryableError) as limited:
            await adapter.send(outbound("+2"))

    assert limited.value.retry_after_s == 1.0


async def test_mock_fails_at_the_configured_error_rate(deployment: Deployment) -> None:
    settings = deployment.settings(mocks={"error_rate": 1.0})
    async with (
        Supervisor(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        with pytest.raises(RetryableError, match="HTTP 500"):
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))
