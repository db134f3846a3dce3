"""The channel mocks speak the providers' HTTP and call back with signed webhooks, as Meta does."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
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
from chat4all_workers.config_values import Secret
from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    TemplateRejectedError,
    ThrottledError,
    TransientProviderError,
    WindowClosedError,
)
from chat4all_workers.meta.instagram_webhooks import parse_instagram
from chat4all_workers.meta.notifications import ERROR_CODES_HREF
from chat4all_workers.meta.payloads import HUMAN_AGENT, OutboundMessage
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


def media(recipient: str, url: str, n: int = 1, *, media_type: str = "image") -> OutboundMessage:
    return dataclasses.replace(
        outbound(recipient, n), kind="media", text="", media_url=url, media_type=media_type
    )


def template(recipient: str, name: str, language: str, *parameters: str) -> OutboundMessage:
    body = {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
    spec = {"name": name, "language": {"code": language}, "components": [body]}
    return dataclasses.replace(outbound(recipient), kind="template", template=spec)


@dataclass
class StandIn:
    """An app's webhook endpoint standing in for the webhooks role: it records what the mock
    posts (and when it came) and answers `refuse_first` POSTs with 503 before it takes them."""

    url: str
    refuse_first: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    signed: list[bool] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic()
    refused: int = 0
    # Each POST's path, raw body and signature header (an app's own URL is /hook/{app}).
    posts: list[tuple[str, bytes, str | None]] = field(default_factory=list)

    def whatsapp_statuses(self) -> list[str]:
        return [status["status"] for status in self.whatsapp_status_items()]

    def whatsapp_status_items(self) -> list[dict[str, Any]]:
        return [
            status
            for body in self.bodies
            for status in body["entry"][0]["changes"][0]["value"].get("statuses", [])
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
        endpoint.arrived.append(time.monotonic())
        endpoint.posts.append((request.path, raw, request.headers.get(SIGNATURE_HEADER)))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/hook/{app}", hook)
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


# -- like a real account: what Meta refuses, the mocks refuse ---------------------------------


async def test_mock_refuses_a_wrong_token_and_an_unknown_account_as_meta_does(
    deployment: Deployment,
) -> None:
    settings = deployment.settings()
    base = settings.whatsapp.base_url
    wrong_token = dataclasses.replace(settings.whatsapp, access_token=Secret("not-the-token"))
    other_number = dataclasses.replace(settings.whatsapp, phone_number_id="999")
    other_account = dataclasses.replace(settings.instagram, user_id="17841499999999999")
    async with (
        App(settings, roles=["whatsapp_mock", "instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
        aiohttp.ClientSession() as raw,
    ):
        await sup.wait_ready(10)
        with pytest.raises(AccountError) as bad_token:
            await WhatsAppAdapter(wrong_token, http).send(outbound("+1"))
        with pytest.raises(AccountError) as unknown_number:
            await WhatsAppAdapter(other_number, http).send(outbound("+1"))
        with pytest.raises(AccountError) as unknown_account:
            await InstagramAdapter(other_account, http).send(outbound("1784"))
        async with raw.post(f"{base}/v21.0/1000/messages", json={}) as response:  # no token
            no_token = (response.status, await response.json())
        stats = await mock_stats(base)

    invalid = "Invalid OAuth access token - Cannot parse access token"
    assert str(bad_token.value).startswith(f"HTTP 401 (190): {invalid}")
    assert str(unknown_number.value).startswith(
        "HTTP 400 (100/33): Unsupported post request. Object with ID '999' does not exist, "
        "cannot be loaded due to missing permissions, or does not support this operation"
    )
    assert str(unknown_account.value).startswith("HTTP 400 (100/33)")
    assert no_token[0] == 401
    assert no_token[1]["error"] | {"fbtrace_id": "-"} == {
        "message": invalid,
        "type": "OAuthException",
        "code": 190,
        "fbtrace_id": "-",
    }
    assert (stats["unauthorized"], stats["unknown_account"], stats["accepted"]) == (2, 1, 0)


async def test_mock_refuses_free_form_whatsapp_messages_until_the_user_writes(
    deployment: Deployment,
) -> None:
    settings = deployment.settings(mocks={"windows": "enforce"})
    base = settings.whatsapp.base_url
    async with (
        App(settings, roles=["whatsapp_mock", "webhooks"], serve_http=False) as sup,
        HttpClient() as http,
        aiohttp.ClientSession() as raw,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, http)
        with pytest.raises(WindowClosedError) as closed:
            await adapter.send(outbound("+5511988887777"))
        await adapter.send(template("+5511988887777", "hello_world", "en_US"))  # no window needed
        answer = await post_inbound(raw, base, {"from": "+5511988887777", "name": "Ana"})
        # The same user as Meta names them: the number's digits.
        opened = await adapter.send(outbound("5511988887777", 2))
        records = await eventually_read(deployment, "inbound_messages", 1)
        stats = await mock_stats(base)

    assert str(closed.value).startswith(
        "HTTP 400 (131047): (#131047) Re-engagement message: More than 24 hours have passed "
        "since the recipient last replied to the sender number."
    )
    assert opened.provider_message_id.startswith("wamid.")
    (message,) = answer["notification"]["entry"][0]["changes"][0]["value"]["messages"]
    (record,) = records
    assert (record["channel"], record["sender"], record["sender_name"]) == (
        "whatsapp",
        "5511988887777",
        "Ana",
    )
    assert (record["provider_message_id"], record["text"]) == (message["id"], "hi")
    assert (stats["window_closed"], stats["accepted"], stats["inbound"]) == (1, 2, 1)


async def test_mock_instagram_window_stretches_to_seven_days_for_a_human_agent(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={"windows": "enforce", "instagram_webhook_url": app.url}
        )
        base = settings.instagram.base_url
        day_s = 86_400
        async with (
            App(settings, roles=["instagram_mock"], serve_http=False) as sup,
            HttpClient() as http,
            aiohttp.ClientSession() as raw,
        ):
            await sup.wait_ready(10)
            adapter = InstagramAdapter(settings.instagram, http)
            await post_inbound(raw, base, {"from": "1784a", "at_s": time.time() - 2 * day_s})
            await post_inbound(raw, base, {"from": "1784b", "at_s": time.time() - 8 * day_s})
            with pytest.raises(WindowClosedError) as closed:
                await adapter.send(outbound("1784a"))
            agent = await adapter.send(dataclasses.replace(outbound("1784a", 2), tag=HUMAN_AGENT))
            with pytest.raises(WindowClosedError) as too_late:
                await adapter.send(dataclasses.replace(outbound("1784b", 3), tag=HUMAN_AGENT))
            stats = await mock_stats(base)

    assert str(closed.value).startswith(
        "HTTP 403 (10/2534022): (#10) This message is sent outside of allowed window"
    )
    assert agent.provider_message_id.startswith("mid.")
    assert too_late.value.provider_code == 10
    assert (stats["window_closed"], stats["accepted"]) == (2, 1)


async def test_mock_opens_the_windows_of_open_windows_for_at_start_up(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={
                "windows": "enforce",
                "open_windows_for": ["whatsapp:+5511999990000", "instagram:17841400000000000"],
                "whatsapp_webhook_url": app.url,
            }
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            await eventually(lambda: len(app.bodies) == 1, message="the user's message")
            sent = await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511999990000"))
            stats = await mock_stats(settings.whatsapp.base_url)

    value = app.bodies[0]["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == settings.whatsapp.phone_number_id
    assert [m["from"] for m in value["messages"]] == ["5511999990000"]
    assert [c["wa_id"] for c in value["contacts"]] == ["5511999990000"]
    assert app.signed[0]
    assert sent.provider_message_id.startswith("wamid.")
    assert (stats["inbound"], stats["window_closed"]) == (1, 0)  # not Instagram's user


async def test_mock_inbound_posts_an_instagram_users_message_as_meta_does(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(mocks={"instagram_webhook_url": app.url})
        async with (
            App(settings, roles=["instagram_mock"], serve_http=False) as sup,
            aiohttp.ClientSession() as raw,
        ):
            await sup.wait_ready(10)
            doc = {"from": "17841400000000042", "text": "olá"}
            answer = await post_inbound(raw, settings.instagram.base_url, doc)
            await eventually(lambda: len(app.bodies) == 1, message="the user's message")

    (event,) = app.bodies[0]["entry"][0]["messaging"]
    assert app.bodies[0] == answer["notification"]
    assert (event["sender"]["id"], event["recipient"]["id"]) == ("17841400000000042", "2000")
    assert event["message"]["text"] == "olá"
    (parsed,) = parse_instagram(app.bodies[0], ours="2000".__eq__).inbound
    assert (parsed.sender, parsed.text, parsed.provider_message_id) == (
        "17841400000000042",
        "olá",
        event["message"]["mid"],
    )


async def test_mock_inbound_reaction_names_the_message_it_reacts_to(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={"whatsapp_webhook_url": app.url, "delivered_after_ms": 60_000.0}
        )
        base = settings.whatsapp.base_url
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
            aiohttp.ClientSession() as raw,
        ):
            await sup.wait_ready(10)
            sent = await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+5511"))
            answer = await post_inbound(raw, base, {"from": "5511", "type": "reaction"})

    (message,) = answer["notification"]["entry"][0]["changes"][0]["value"]["messages"]
    assert (message["type"], message["from"]) == ("reaction", "5511")
    assert message["reaction"] == {"message_id": sent.provider_message_id, "emoji": "👍"}


async def test_mock_refuses_unknown_templates_and_wrong_parameter_counts(
    deployment: Deployment,
) -> None:
    approved = {"hello_world": "en_US:0", "order_update": "pt_BR:2 en_US:2"}
    settings = deployment.settings(mocks={"templates": approved})
    async with (
        App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        adapter = WhatsAppAdapter(settings.whatsapp, http)
        await adapter.send(template("+1", "hello_world", "en_US"))
        await adapter.send(template("+1", "order_update", "pt_BR", "Ana", "42"))
        with pytest.raises(TemplateRejectedError) as other_language:
            await adapter.send(template("+1", "hello_world", "pt_BR"))
        with pytest.raises(TemplateRejectedError) as one_short:
            await adapter.send(template("+1", "order_update", "en_US", "Ana"))
        stats = await mock_stats(settings.whatsapp.base_url)

    assert str(other_language.value).startswith(
        "HTTP 404 (132001): (#132001) Template name does not exist in the translation: "
        "template name (hello_world) does not exist in pt_BR"
    )
    assert str(one_short.value).startswith(
        "HTTP 400 (132000): (#132000) Number of parameters does not match the expected number "
        "of params: body: number of localizable_params (1) does not match the expected number "
        "of params (2)"
    )
    assert (stats["template_rejected"], stats["accepted"]) == (2, 2)


async def test_mock_fails_a_whatsapp_media_message_whose_link_cannot_be_fetched(
    deployment: Deployment,
) -> None:
    async with stand_in() as app, media_server() as files:
        settings = deployment.settings(
            mocks={
                "whatsapp_webhook_url": app.url,
                "delivered_after_ms": 10.0,
                "read_after_ms": 20.0,
            }
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            adapter = WhatsAppAdapter(settings.whatsapp, http)
            fine = await adapter.send(media("+1", f"{files}/photo.jpg", 1))
            gone = await adapter.send(media("+2", f"{files}/gone.jpg", 2))  # taken: 200
            await eventually(lambda: len(app.bodies) == 5, message="both messages' webhooks")
            stats = await mock_stats(settings.whatsapp.base_url)

    by_message: dict[str, list[dict[str, Any]]] = {}
    for item in app.whatsapp_status_items():
        by_message.setdefault(item["id"], []).append(item)
    assert [i["status"] for i in by_message[fine.provider_message_id]] == [
        "sent",
        "delivered",
        "read",
    ]
    sent, failed = by_message[gone.provider_message_id]
    assert (sent["status"], failed["status"]) == ("sent", "failed")
    assert failed["errors"] == [
        {
            "code": 131053,
            "title": "Media upload error",
            "message": "Media upload error",
            "error_data": {"details": "Unable to download the media from the link"},
            "href": ERROR_CODES_HREF,
        }
    ]
    assert (stats["accepted"], stats["media_fetched"], stats["media_failed"]) == (2, 1, 1)


async def test_mock_instagram_media_not_fetched_in_time_gets_no_webhook(
    deployment: Deployment,
) -> None:
    async with stand_in() as app, media_server() as files:
        settings = deployment.settings(
            mocks={"instagram_webhook_url": app.url, "media_fetch_timeout_s": 0.2}
        )
        base = settings.instagram.base_url
        async with (
            App(settings, roles=["instagram_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            adapter = InstagramAdapter(settings.instagram, http)
            await adapter.send(media("1784", f"{files}/slow.jpg"))

            async def fetch_failed() -> bool:
                return bool((await mock_stats(base))["media_failed"] == 1)

            await eventually(fetch_failed, message="the fetch to time out")
            stats = await mock_stats(base)

    assert stats["accepted"] == 1
    assert (stats["webhooks"]["posted"], stats["webhooks"]["pending"]) == (0, 0)
    assert app.bodies == []  # Instagram sends no failed status: the message is silently lost


async def test_mock_fails_accepted_messages_asynchronously_at_the_configured_rate(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={
                "whatsapp_webhook_url": app.url,
                "async_failure_rate": 1.0,
                "async_failure_code": 131049,
                "delivered_after_ms": 10.0,
            }
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))
            await eventually(lambda: len(app.bodies) == 2, message="sent, then failed")
            stats = await mock_stats(settings.whatsapp.base_url)

    sent, failed = app.whatsapp_status_items()
    assert (sent["status"], failed["status"]) == ("sent", "failed")
    title = "This message was not delivered to maintain healthy ecosystem engagement."
    assert failed["errors"] == [
        {
            "code": 131049,
            "title": title,
            "message": title,
            "error_data": {
                "details": "In order to maintain a healthy ecosystem engagement, the message "
                "failed to be delivered."
            },
            "href": ERROR_CODES_HREF,
        }
    ]
    assert (stats["accepted"], stats["async_failed"]) == (1, 1)


async def test_mock_answers_a_gateway_timeout_after_taking_the_message(
    deployment: Deployment,
) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={"whatsapp_webhook_url": app.url, "gateway_timeout_rate": 1.0}
        )
        base = settings.whatsapp.base_url
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
            aiohttp.ClientSession() as raw,
        ):
            await sup.wait_ready(10)
            with pytest.raises(TransientProviderError) as timed_out:
                await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))
            headers = {"Authorization": f"Bearer {settings.whatsapp.access_token.get()}"}
            body: dict[str, Any] = {"messaging_product": "whatsapp", "to": "+2", "type": "text"}
            body["text"] = {"body": "hi"}
            async with raw.post(f"{base}/v21.0/1000/messages", json=body, headers=headers) as r:
                page = (r.status, r.content_type, await r.text())
            await eventually(lambda: app.whatsapp_statuses().count("sent") == 2, message="sent")
            stats = await mock_stats(base)

    assert timed_out.value.in_doubt  # an answer that proves nothing
    assert page[:2] == (504, "text/html")
    assert "<title>504 Gateway Time-out</title>" in page[2]
    assert (stats["accepted"], stats["gateway_timeout"]) == (2, 2)


async def test_mock_throttles_a_random_share_of_calls_without_taking_them(
    deployment: Deployment,
) -> None:
    settings = deployment.settings(mocks={"random_throttle_rate": 1.0})
    async with (
        App(settings, roles=["whatsapp_mock", "instagram_mock"], serve_http=False) as sup,
        HttpClient() as http,
    ):
        await sup.wait_ready(10)
        with pytest.raises(ThrottledError) as whatsapp:
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))
        with pytest.raises(ThrottledError) as instagram:
            await InstagramAdapter(settings.instagram, http).send(outbound("1784"))
        stats = {
            c: await mock_stats(getattr(settings, c).base_url) for c in ("whatsapp", "instagram")
        }

    assert str(whatsapp.value).startswith("HTTP 429 (130429)")
    assert str(instagram.value).startswith("HTTP 429 (4)")
    assert instagram.value.app  # Instagram's code 4: the app's limit
    assert [(s["randomly_throttled"], s["accepted"]) for s in stats.values()] == [(1, 0), (1, 0)]


async def test_mock_delays_every_webhook_by_webhook_delay_ms(deployment: Deployment) -> None:
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={"whatsapp_webhook_url": app.url, "webhook_delay_ms": 300.0}
        )
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            started = time.monotonic()
            await WhatsAppAdapter(settings.whatsapp, http).send(outbound("+1"))
            await eventually(lambda: len(app.bodies) >= 1, message="the sent webhook")

    assert app.whatsapp_statuses()[0] == "sent"
    assert app.arrived[0] - started >= 0.3


async def mock_stats(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base_url}/__mock__/stats") as response:
        stats: dict[str, Any] = await response.json()
        return stats


async def set_token(http: aiohttp.ClientSession, base_url: str, *, expired: bool) -> None:
    async with http.post(f"{base_url}/__mock__/token", json={"expired": expired}) as response:
        assert response.status == 200


async def post_inbound(
    http: aiohttp.ClientSession, base_url: str, doc: dict[str, Any]
) -> dict[str, Any]:
    """A user writes to the mock's account (`POST /__mock__/inbound`)."""
    async with http.post(f"{base_url}/__mock__/inbound", json=doc) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        return answer


async def eventually_read(deployment: Deployment, topic: str, count: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(await read_topic(deployment.stack, deployment.topics[topic])) >= count

    await eventually(enough, timeout_s=20, message=f"{count} record(s) in {topic}")
    return [
        orjson.loads(r.value) for r in await read_topic(deployment.stack, deployment.topics[topic])
    ]


@contextlib.asynccontextmanager
async def media_server() -> AsyncIterator[str]:
    """A file server for media links: /photo.jpg answers 200, /slow.jpg never answers (until
    the block ends), anything else 404; yields its base URL."""
    port = free_port()
    release = asyncio.Event()

    async def photo(_: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8\xff" + bytes(1024), content_type="image/jpeg")

    async def slow(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/photo.jpg", photo)
    app.router.add_get("/slow.jpg", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


async def test_mock_serves_many_accounts_each_with_its_token_limits_and_app(
    deployment: Deployment,
) -> None:
    """`mocks.accounts`: a second business's number answers with its own token only, throttles
    at its own rate, signs its webhooks with its app's secret and posts them to the app's URL;
    its token expires alone."""
    async with stand_in() as app:
        settings = deployment.settings(
            mocks={
                "whatsapp_webhook_url": app.url,
                "delivered_after_ms": 0.0,
                "read_after_ms": 0.0,
                "accounts": {
                    "2002": "channel=whatsapp token=tok-globex app=globex secret=sec-globex rate=2"
                },
            }
        )
        ours = settings.whatsapp
        async with (
            App(settings, roles=["whatsapp_mock"], serve_http=False) as sup,
            HttpClient() as http,
        ):
            await sup.wait_ready(10)
            globex = WhatsAppAdapter(ours, http, provider_id="2002", token=Secret("tok-globex"))
            wrong_token = WhatsAppAdapter(ours, http, provider_id="2002", token=ours.access_token)
            sent = await globex.send(outbound("+5511", 1))
            with pytest.raises(AccountError):
                await wrong_token.send(outbound("+5511", 2))
            await globex.send(outbound("+5512", 3))
            with pytest.raises(ThrottledError):  # its own rate: 2/s, a burst of 2
                await globex.send(outbound("+5513", 4))
            await WhatsAppAdapter(ours, http).send(outbound("+5514", 5))  # the other: its own
            async with aiohttp.ClientSession() as client:
                expire = {"expired": True, "account": "2002"}
                async with client.post(f"{ours.base_url}/__mock__/token", json=expire) as answer:
                    assert answer.status == 200
            with pytest.raises(AccountError):
                await globex.send(outbound("+5515", 6))
            await WhatsAppAdapter(ours, http).send(outbound("+5516", 7))  # still sends

            async def globex_webhooks() -> bool:
                return sum(path == "/hook/globex" for path, _, _ in app.posts) >= 6

            await eventually(globex_webhooks, message="the second account's webhooks")

    globex_posts = [(raw, sig) for path, raw, sig in app.posts if path == "/hook/globex"]
    assert sent.provider_message_id.startswith("wamid.")
    assert all(signature_matches("sec-globex", raw, sig) for raw, sig in globex_posts)
    assert not any(signature_matches(DEV_APP_SECRET, raw, sig) for raw, sig in globex_posts)
    numbers = {
        orjson.loads(raw)["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"]
        for raw, _ in globex_posts
    }
    assert numbers == {"2002"}
    assert {path for path, _, _ in app.posts} == {"/hook", "/hook/globex"}
