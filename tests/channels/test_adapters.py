"""The real channel adapters against loopback servers: request shapes and error classification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from chat4all_workers.channels.http import HttpClient
from chat4all_workers.channels.instagram import InstagramAdapter
from chat4all_workers.channels.whatsapp import WhatsAppAdapter
from chat4all_workers.config import InstagramSettings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.errors import (
    AccountError,
    ProviderError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
)
from chat4all_workers.meta.payloads import OutboundMessage
from harness.deployment import free_port

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


def instagram(port: int, session: HttpClient, timeout_s: float = 5) -> InstagramAdapter:
    settings = InstagramSettings(
        base_url=f"http://127.0.0.1:{port}",
        access_token=Secret(TOKEN),
        user_id="99",
        timeout_s=timeout_s,
    )
    return InstagramAdapter(settings, session)


def meta_error(code: int, subcode: int | None = None, message: str = "nope") -> dict[str, object]:
    error: dict[str, object] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": "the details"},
        "fbtrace_id": "Az8or2yhqkZfEZ",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "code"),
    [
        # Meta's codes decide, whatever the HTTP status: throttling as HTTP 400.
        (400, meta_error(130429), {}, ThrottledError, 130429),
        (400, meta_error(131056), {}, ThrottledError, 131056),
        (400, meta_error(4), {}, ThrottledError, 4),
        (500, meta_error(131000), {}, TransientProviderError, 131000),
        (400, meta_error(2), {}, TransientProviderError, 2),
        (400, meta_error(131026), {}, ProviderRejectedError, 131026),
        (400, meta_error(131047), {}, ProviderRejectedError, 131047),
        (401, meta_error(190, 463), {}, AccountError, 190),
        (403, meta_error(200), {}, AccountError, 200),
        (400, meta_error(131031), {}, AccountError, 131031),
        (400, meta_error(368), {}, AccountError, 368),
        # No code it knows: the HTTP status decides.
        (429, {"error": {"message": "nope"}}, {"Retry-After": "7"}, ThrottledError, None),
        (503, "<html>nope</html>", {}, TransientProviderError, None),
        (400, meta_error(999999), {}, ProviderRejectedError, 999999),
        (401, meta_error(999999), {}, AccountError, 999999),
        (502, meta_error(999999), {}, TransientProviderError, 999999),
    ],
)
async def test_whatsapp_adapter_classifies_errors_by_meta_code_then_http_status(
    http: HttpClient,
    status: int,
    body: object,
    headers: dict[str, str],
    expected: type[ProviderError],
    code: int | None,
) -> None:
    scripted = Scripted([(status, body, headers)])
    runner = await serve(scripted)
    try:
        with pytest.raises(expected) as error:
            await whatsapp(scripted.port, http).send(TEXT)
    finally:
        await runner.cleanup()

    assert isinstance(error.value, ProviderError)
    assert error.value.provider_code == code
    assert str(error.value).startswith(f"HTTP {status}")  # no channel prefix: the router adds it
    assert "nope" in str(error.value)
    assert TOKEN not in str(error.value)


async def test_an_error_text_names_status_code_details_and_fbtrace_id(http: HttpClient) -> None:
    scripted = Scripted([(400, meta_error(131026, message="(#131026) Message undeliverable"), {})])
    runner = await serve(scripted)
    try:
        with pytest.raises(ProviderRejectedError) as error:
            await whatsapp(scripted.port, http).send(TEXT)
    finally:
        await runner.cleanup()

    assert str(error.value) == (
        "HTTP 400 (131026): (#131026) Message undeliverable: the details "
        "[fbtrace_id Az8or2yhqkZfEZ]"
    )
    assert (error.value.error_class, error.value.fbtrace_id) == ("rejected", "Az8or2yhqkZfEZ")


async def test_a_throttle_carries_retry_after_and_the_pair_flag(http: HttpClient) -> None:
    scripted = Scripted(
        [(400, meta_error(131056), {"Retry-After": "3"}), (400, meta_error(130429), {})]
    )
    runner = await serve(scripted)
    try:
        adapter = whatsapp(scripted.port, http)
        with pytest.raises(ThrottledError) as pair:
            await adapter.send(TEXT)
        with pytest.raises(ThrottledError) as account:
            await adapter.send(TEXT)
    finally:
        await runner.cleanup()

    assert (pair.value.pair, pair.value.retry_after_s) == (True, 3.0)
    assert (account.value.pair, account.value.retry_after_s) == (False, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (meta_error(10, 2018278), ProviderRejectedError),  # outside the window: this message
        (meta_error(10), AccountError),  # a permission: the account
        (meta_error(100, 2018001), ProviderRejectedError),  # no matching user
        (meta_error(551), ProviderRejectedError),
        (meta_error(1200), TransientProviderError),
        (meta_error(613), ThrottledError),
        (meta_error(190), AccountError),
    ],
)
async def test_instagram_adapter_classifies_by_code_and_subcode(
    http: HttpClient, body: object, expected: type[Exception]
) -> None:
    scripted = Scripted([(400, body, {})])
    runner = await serve(scripted)
    try:
        with pytest.raises(expected):
            await instagram(scripted.port, http).send(TEXT)
    finally:
        await runner.cleanup()


async def test_adapter_treats_a_timeout_as_transient_and_in_doubt(http: HttpClient) -> None:
    scripted = Scripted([(200, {"messages": [{"id": "late"}]}, {})], delay_s=1.0)
    runner = await serve(scripted)
    try:
        with pytest.raises(TransientProviderError, match="no answer within") as error:
            await whatsapp(scripted.port, http, timeout_s=0.2).send(TEXT)
    finally:
        await runner.cleanup()

    assert error.value.in_doubt


async def test_adapter_treats_a_refused_connection_as_transient_not_in_doubt(
    http: HttpClient,
) -> None:
    with pytest.raises(TransientProviderError) as error:
        await whatsapp(free_port(), http).send(TEXT)

    assert not error.value.in_doubt
    assert TOKEN not in str(error.value)
