"""What a mock does after accepting a message (simulators/processing.py): fetch its media, then
call the app back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from aiohttp import web

from chat4all_workers.serving import serving
from chat4all_workers.simulators.accounts import Account
from chat4all_workers.simulators.ledger import Accepted, Ledger
from chat4all_workers.simulators.processing import Processing
from chat4all_workers.simulators.sends import Send
from chat4all_workers.simulators.settings import MockSettings
from tests.simulators.support import pending_webhooks, simulated_account


def accepted_send(account: Account, media_url: str | None = None) -> tuple[Accepted, Send]:
    send = Send(recipient="+5511999990000", user="5511999990000", kind="text", text="hi")
    if media_url is not None:
        send = dataclasses.replace(send, kind="image", text=media_url, media_url=media_url)
    accepted = Accepted("wamid.1", None, None, send.recipient, send.text, time.time(), account.id)
    return accepted, send


@contextlib.asynccontextmanager
async def media_link() -> AsyncIterator[str]:
    """A file server: `/ok` answers 200 with a small body, anything else 404."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG...")

    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serving(app, host="127.0.0.1", port=0) as port:
        yield f"http://127.0.0.1:{port}"


async def test_processing_calls_back_at_once_for_a_message_without_media() -> None:
    ledger = Ledger("whatsapp")
    processing = Processing("whatsapp", MockSettings(), ledger)
    account = simulated_account()
    accepted, send = accepted_send(account)

    processing.start(account, accepted, send, fails_later=False)

    assert pending_webhooks(account) == 1
    assert ledger.counts["async_failed"] == 0


async def test_processing_counts_a_message_that_fails_later() -> None:
    ledger = Ledger("whatsapp")
    processing = Processing("whatsapp", MockSettings(), ledger)
    account = simulated_account()
    accepted, send = accepted_send(account)

    processing.start(account, accepted, send, fails_later=True)

    assert pending_webhooks(account) == 1
    assert ledger.counts["async_failed"] == 1


async def test_processing_fetches_the_media_then_calls_back() -> None:
    ledger = Ledger("whatsapp")
    processing = Processing("whatsapp", MockSettings(), ledger)
    account = simulated_account()
    async with media_link() as base, processing.running():
        accepted, send = accepted_send(account, media_url=f"{base}/ok")
        processing.start(account, accepted, send, fails_later=False)
        assert pending_webhooks(account) == 0  # not before the fetch
        await processing.finish(asyncio.get_running_loop().time() + 10)

    assert ledger.counts["media_fetched"] == 1
    assert pending_webhooks(account) == 1


async def test_processing_fails_a_whatsapp_message_whose_media_cannot_be_fetched() -> None:
    ledger = Ledger("whatsapp")
    processing = Processing("whatsapp", MockSettings(), ledger)
    account = simulated_account()
    async with media_link() as base, processing.running():
        accepted, send = accepted_send(account, media_url=f"{base}/gone")
        processing.start(account, accepted, send, fails_later=False)
        await processing.finish(asyncio.get_running_loop().time() + 10)

    assert ledger.counts["media_failed"] == 1
    assert pending_webhooks(account) == 1  # sent, then failed


async def test_processing_says_nothing_of_an_instagram_message_whose_media_failed() -> None:
    ledger = Ledger("instagram")
    processing = Processing("instagram", MockSettings(), ledger)
    account = simulated_account("17841400000000000", channel="instagram")
    async with media_link() as base, processing.running():
        accepted, send = accepted_send(account, media_url=f"{base}/gone")
        processing.start(account, accepted, send, fails_later=False)
        await processing.finish(asyncio.get_running_loop().time() + 10)

    assert ledger.counts["media_failed"] == 1
    assert pending_webhooks(account) == 0
