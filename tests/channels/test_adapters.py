"""The real channel adapters against loopback servers: request shapes and error classification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from chat4all_workers.channels.base import OutboundMessage
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import InstagramSettings, Secret, WhatsAppSettings
from chat4all_workers.errors import ProviderRejectedError, RetryableError
from tests.support import free_port

TOKEN = "EAAG-very-secret-token"


class Scripted:
    """A loopback server answering each request with the next scripted (status, body, headers)."""

    def __init__(
        self, answers: list[tuple[int, object, dict[str, str]]], delay_s: float = 0
    ) -> None:
        self.answers = answers
        self.delay_s = delay_s
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers), await request.json()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, body, headers = self.answers.pop(0)
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient() as client:
        yield client


async def serve(scripted: Scripted) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/{version}/{account}/messages", scripted.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", scripted.port).start()
    return runner


def whatsapp(port: int, session: HttpClient, timeout_s: float = 5) -> WhatsAppAdapter:
    settings = WhatsAppSettings(
        base_url=f"http://127.0.0.1:{port}",
        access_token=Secret(TOKEN),
        phone_number_id="1234",
        timeout_s=timeout_s,
    )
    return WhatsAppAdapter(settings, session)


TEXT = OutboundMessage(
    message_id="7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11",
    conversation_id=42,
    recipient="+5511999990000",
    kind="text",
    text="hello",
)


async def test_whatsapp_adapter_posts_the_cloud_api_shape_with_a_bearer_token(
    http: HttpClient,
) -> None:
    scripted = Scripted([(200, {"messages": [{"id": "wamid.1"}]}, {})])
    runner = await serve(scripted)
    try:
        result = await whatsapp(scripted.port, http).send(TEXT)
    finally:
        await runner.cleanup()

    path, headers, body = scripted.requests[0]
    assert result.provider_message_id == "wamid.1"
    assert path == "/v21.0/1234/messages"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+5511999990000",
        "type": "text",
        "text": {"body": "hello", "preview_url": False},
        "biz_opaque_callback_data": TEXT.callback_data(),
    }


async def test_instagram_adapter_posts_the_messaging_api_shape(http: HttpClient) -> None:
    scripted = Scripted([(200, {"recipient_id": "178", "message_id": "mid.1"}, {})])
    runner = await serve(scripted)
    settings = InstagramSettings(
        base_url=f"http://127.0.0.1:{scripted.port}", access_token=Secret(TOKEN), user_id="99"
    )
    try:
        result = await InstagramAdapter(settings, http).send(
            OutboundMessage(
                message_id="m", conversation_id=1, recipient="178", kind="text", text="hi"
            )
        )
    finally:
        await runner.cleanup()

    path, _, body = scripted.requests[0]
    assert (result.provider_message_id, path) == ("mid.1", "/v21.0/99/messages")
    assert body["recipient"] == {"id": "178"}
    assert body["message"]["text"] == "hi"


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (429, {"Retry-After": "7"}, RetryableError, 7.0),
        (500, {}, RetryableError, None),
        (503, {}, RetryableError, None),
        (400, {}, ProviderRejectedError, None),
        (401, {}, ProviderRejectedError, None),
    ],
)
async def test_adapter_classifies_http_errors(
    http: HttpClient,
    status: int,
    headers: dict[str, str],
    expected: type[Exception],
    retry_after: float | None,
) -> None:
    scripted = Scripted([(status, {"error": {"message": "nope", "code": 1}}, headers)])
    runner = await serve(scripted)
    try:
        with pytest.raises(expected) as error:
            await whatsapp(scripted.port, http).send(TEXT)
    finally:
        await runner.cleanup()

    assert "nope" in str(error.value)
    assert TOKEN not in str(error.value)
    if retry_after is not None:
        assert isinstance(error.value, RetryableError)
        assert error.value.retry_after_s == retry_after


async def test_adapter_treats_a_timeout_as_retryable(http: HttpClient) -> None:
    scripted = Scripted([(200, {"messages": [{"id": "late"}]}, {})], delay_s=1.0)
    runner = await serve(scripted)
    try:
        with pytest.raises(RetryableError, match="no answer within"):
            await whatsapp(scripted.port, http, timeout_s=0.2).send(TEXT)
    finally:
        await runner.cleanup()


async def test_adapter_treats_a_refused_connection_as_retryable(
    http: HttpClient,
) -> None:
    with pytest.raises(RetryableError) as error:
        await whatsapp(free_port(), http).send(TEXT)

    assert TOKEN not in str(error.value)
