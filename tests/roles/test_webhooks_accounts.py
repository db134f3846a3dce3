"""Webhooks for many Meta apps and accounts: each notification checked with the secret of the app
it came for, routed to its account, every status landing on its message once."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import orjson
import pytest

from chat4all_workers.accounts.sealing import Keyring, new_key_line
from chat4all_workers.accounts.writer import put_account, put_app
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_notification,
    instagram_read,
    whatsapp_notification,
    whatsapp_status,
)
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from harness.deployment import Deployment
from harness.pipeline import insert_one
from harness.waiting import eventually
from tests.roles.webhook_support import running, webhook_settings
from tests.support import metric_value

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

KEY = new_key_line("test")
APPS = {"app-a": "secret-of-app-a", "app-b": "secret-of-app-b"}
AT_S = 1_764_000_000


def app_of(n: int) -> str:
    return "app-a" if n % 2 == 0 else "app-b"


async def register(database_url: str) -> list[tuple[str, str, str]]:
    """20 WhatsApp numbers and 5 Instagram accounts over the two apps: (channel, id, app)."""
    keyring = Keyring.parse(KEY)
    accounts = [("whatsapp", str(4000 + n), app_of(n)) for n in range(20)]
    accounts += [("instagram", str(5000 + n), app_of(n)) for n in range(5)]
    conn = await asyncpg.connect(database_url)
    try:
        for app_id, secret in APPS.items():
            await put_app(conn, keyring, app_id=app_id, secret=secret, verify_token=app_id)
        for channel, provider_id, app_id in accounts:
            await put_account(
                conn,
                keyring,
                channel=channel,
                key=f"biz{provider_id}",
                provider_id=provider_id,
                app_id=app_id,
                token="t",
            )
    finally:
        await conn.close()
    return accounts


def callback(message_id: str, conversation_id: int) -> str:
    return orjson.dumps({"message_id": message_id, "conversation_id": conversation_id}).decode()


async def test_webhooks_route_two_apps_notifications_for_25_accounts_each_status_once(
    deployment: Deployment,
) -> None:
    accounts = await register(deployment.database_url)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        messages = [await insert_one(conn, n, f"hello {n}") for n in range(len(accounts))]
    finally:
        await conn.close()
    posts: list[tuple[str, str | None, bytes, str]] = []  # channel, path's app, body, secret
    expected: set[tuple[str, str, str]] = set()
    for (channel, provider_id, app_id), sent in zip(accounts, messages, strict=True):
        data = callback(sent.message_id, sent.conversation_id)
        if channel == "whatsapp":
            for status in ("sent", "delivered", "read"):
                item = whatsapp_status(
                    f"wamid.{provider_id}",
                    status,
                    at_s=AT_S,
                    recipient_id="5511",
                    callback_data=data,
                )
                body = whatsapp_notification(phone_number_id=provider_id, statuses=[item])
                posts.append((channel, None, orjson.dumps(body), APPS[app_id]))
            expected |= {(sent.message_id, channel, s) for s in ("SENT", "DELIVERED", "READ")}
        else:
            echo = instagram_echo(
                f"mid.{provider_id}", customer="c", account_id=provider_id, at_ms=AT_S * 1000,
                metadata=data,
            )  # fmt: skip
            body = instagram_notification(account_id=provider_id, events=[echo])
            posts.append((channel, None, orjson.dumps(body), APPS[app_id]))
            expected.add((sent.message_id, channel, "SENT"))
    random.Random(21).shuffle(posts)  # reordered...
    posts += posts[: len(posts) // 2]  # ...and a duplicate of every other one
    # Half of them to each app's own URL, the rest to the shared one.
    by_secret = {secret: app_id for app_id, secret in APPS.items()}
    posts = [
        (channel, by_secret[secret] if n % 2 else None, body, secret)
        for n, (channel, _, body, secret) in enumerate(posts)
    ]
    settings = webhook_settings(deployment, accounts={"key": KEY})
    async with running(settings, roles=("webhooks", "status_updater")) as endpoint:

        async def post(channel: str, app_id: str | None, body: bytes, secret: str) -> int:
            url = endpoint.url(channel) + (f"/{app_id}" if app_id else "")
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
            async with endpoint.http.post(url, data=body, headers=headers) as response:
                return response.status

        answers = await asyncio.gather(*(post(*p) for p in posts))
        # Instagram's read receipts name only the mid: after the echoes made the index.
        reads = []
        for (channel, provider_id, app_id), sent in zip(accounts, messages, strict=True):
            if channel == "instagram":
                receipt = instagram_read(
                    f"mid.{provider_id}", customer="c", account_id=provider_id, at_ms=AT_S * 1000
                )
                raw = orjson.dumps(instagram_notification(account_id=provider_id, events=[receipt]))
                reads.append(await post(channel, None, raw, APPS[app_id]))
                expected.add((sent.message_id, channel, "READ"))
        # Wrong secrets, for either app: 401 on its own URL and on the shared one.
        wa_body = posts[0][2] if posts[0][0] == "whatsapp" else posts[1][2]
        refused = [
            await post("whatsapp", "app-a", wa_body, APPS["app-b"]),
            await post("whatsapp", "app-b", wa_body, APPS["app-a"]),
            await post("whatsapp", None, wa_body, "no-apps-secret"),
        ]
        # App B's valid signature over app A's account: taken (200), counted as foreign.
        a_account = next(a for a in accounts if a[0] == "whatsapp" and a[2] == "app-a")
        item = whatsapp_status("wamid.x", "read", at_s=AT_S, recipient_id="5511",
                               callback_data=callback(messages[0].message_id, 0))  # fmt: skip
        foreign = orjson.dumps(whatsapp_notification(phone_number_id=a_account[1], statuses=[item]))
        cross = await post("whatsapp", None, foreign, APPS["app-b"])
        foreign_counted = metric_value(
            endpoint.supervisor.metrics.webhook_events,
            {"channel": "whatsapp", "kind": "status", "outcome": "foreign_account"},
        )

        async def history() -> list[tuple[str, str, str]]:
            conn = await asyncpg.connect(deployment.database_url)
            try:
                rows = await conn.fetch(
                    "SELECT message_id::text, channel, status FROM message_status_history"
                )
            finally:
                await conn.close()
            return [(r[0], r[1], r[2]) for r in rows]

        async def all_landed() -> bool:
            return set(await history()) >= expected

        await eventually(all_landed, timeout_s=30, message="every status in the history")
        rows = await history()

    assert set(answers) == {200}
    assert reads == [200] * 5
    assert refused == [401, 401, 401]
    assert (cross, foreign_counted) == (200, 1)
    assert sorted(rows) == sorted(expected)  # each status once on its message, nothing else
    assert len(rows) == len(set(rows))
