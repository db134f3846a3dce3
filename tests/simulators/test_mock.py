"""One channel's mock (simulators/mock.py) serves the provider's API and its control endpoints
side by side, over the same accounts: no stack, no webhooks (the accounts have no app secret)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from chat4all_workers.simulators.mock import MockChannel
from chat4all_workers.simulators.settings import MockSettings
from tests.simulators.support import simulated_account


@contextlib.asynccontextmanager
async def served_mock() -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    mock = MockChannel(
        "whatsapp", MockSettings(), [simulated_account("1001", app_secret="")], seed=1
    )
    async with (
        mock.serving("127.0.0.1", 0) as port,
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        yield http, "/v21.0/1001/messages"


def text_to(recipient: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": recipient,
        "type": "text",
        "text": {"body": "hi"},
    }


async def test_mock_takes_a_send_once_the_user_wrote_and_lists_it() -> None:
    async with served_mock() as (http, send_path):
        token = {"Authorization": "Bearer token-1001"}
        async with http.post(send_path, json=text_to("+5511999990000"), headers=token) as closed:
            refused = (closed.status, await closed.json())
        async with http.post("/__mock__/inbound", json={"from": "+5511999990000"}) as wrote:
            assert wrote.status == 200
        async with http.post(send_path, json=text_to("+5511999990000"), headers=token) as taken:
            answer = (taken.status, await taken.json())
        async with http.get("/__mock__/sent") as sent:
            listed = await sent.json()
        async with http.get("/__mock__/stats") as stats:
            counts = await stats.json()

    assert refused[0] == 400
    assert refused[1]["error"]["code"] == 131047
    assert answer[0] == 200
    assert answer[1]["messages"] == [{"id": "wamid.MOCK000000000001"}]
    assert [(m["recipient"], m["account"]) for m in listed] == [("+5511999990000", "1001")]
    assert (counts["requests"], counts["accepted"], counts["window_closed"]) == (2, 1, 1)
    assert counts["inbound"] == 1


async def test_mock_token_endpoint_expires_the_token_the_api_checks() -> None:
    async with served_mock() as (http, send_path):
        async with http.post("/__mock__/token", json={"expired": True}) as expired:
            assert (await expired.json()) == {"token_expired": True}
        headers = {"Authorization": "Bearer token-1001"}
        async with http.post(send_path, json=text_to("+5511999990000"), headers=headers) as sent:
            answer = (sent.status, await sent.json())
        async with http.get("/__mock__/stats") as stats:
            counts = await stats.json()

    assert answer[0] == 401
    assert (answer[1]["error"]["code"], answer[1]["error"]["error_subcode"]) == (190, 463)
    assert counts["token_expired"] is True
    assert counts["unauthorized"] == 1
