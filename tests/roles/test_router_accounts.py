"""Many senders: the router sends each message from its account, found in the accounts table
while it runs (accounts added, rotated and disabled with the CLI), each account at its own pace
and through its own pauses; against the real mocks playing every account."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chat4all_workers.accounts.sealing import new_key_line
from chat4all_workers.app import App
from chat4all_workers.config import Settings
from harness.deployment import Deployment
from harness.waiting import eventually
from tests.ops.cli_support import CliRun, run_cli
from tests.roles.test_router import dead_letters, message, record, statuses
from tests.support import produce

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

KEY = new_key_line("test")
APP, APP_SECRET = "acme-app", "acme-app-secret"
# The mock plays these numbers besides the environment's (1000): id -> its token there.
NUMBERS = {"3001": "tok-acme", "3002": "tok-globex-right"}


@dataclass
class Running:
    settings: Settings
    deployment: Deployment
    http: aiohttp.ClientSession
    router: App

    def cli(self, *args: str) -> CliRun:
        env = {"DATABASE_URL": self.deployment.database_url, "ACCOUNTS_KEY": KEY}
        return run_cli(list(args), env)

    async def sent(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.settings.whatsapp.base_url}/__mock__/sent") as answer:
            return list(await answer.json())

    async def sent_text(self, text: str) -> dict[str, Any] | None:
        return next((s for s in await self.sent() if s["text"] == text), None)

    async def was_sent(self, text: str) -> bool:
        return await self.sent_text(text) is not None

    async def send(self, conversation: int, text: str, account: str | None) -> dict[str, Any]:
        doc = message(conversation, text)
        if account is not None:
            doc["account"] = account
        topic = self.deployment.topics["message_processing"]
        await produce(self.deployment.stack, topic, [record(doc)])
        return doc

    async def expire(self, number: str, *, expired: bool) -> None:
        url = f"{self.settings.whatsapp.base_url}/__mock__/token"
        async with self.http.post(url, json={"expired": expired, "account": number}) as answer:
            assert answer.status == 200


@contextlib.asynccontextmanager
async def running(deployment: Deployment, **sections: dict[str, Any]) -> AsyncIterator[Running]:
    """The mocks (every number of NUMBERS) and one router, the accounts key set."""
    more = {
        number: f"channel=whatsapp token={token} app={APP} secret={APP_SECRET}"
        for number, token in NUMBERS.items()
    }
    settings = deployment.settings(
        accounts={"key": KEY, "reload_interval_s": 3600.0},  # changes arrive by NOTIFY alone
        mocks={"accounts": more, "windows": "open"},
        whatsapp={"app_secret": "", **sections.pop("whatsapp", {})},  # no webhooks
        instagram={"app_secret": ""},
        router={"retry_base_s": 0.01, "retry_cap_s": 0.05, "pause_probe_base_s": 0.2},
        **sections,
    )
    mocks = ["whatsapp_mock", "instagram_mock"]
    async with (
        App(settings, roles=mocks, serve_http=False) as mock_app,
        App(settings, roles=["router"], serve_http=False) as router,
        aiohttp.ClientSession() as http,
    ):
        await mock_app.wait_ready(10)
        await router.wait_ready(30)
        yield Running(settings, deployment, http, router)


async def cli(run: Running, *args: str) -> CliRun:
    result = await asyncio.to_thread(run.cli, *args)
    assert result.code == 0, result.err
    return result


async def test_router_sends_from_an_account_added_with_the_cli_while_it_runs(
    deployment: Deployment, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok-acme\n")
    secrets = tmp_path / "secret"
    secrets.write_text(APP_SECRET)
    async with running(deployment) as run:
        await cli(run, "accounts", "app-add", APP, "--secret-file", str(secrets),
                  "--verify-token-file", str(secrets))  # fmt: skip
        await cli(run, "accounts", "add", "whatsapp", "acme", "--provider-id", "3001",
                  "--app", APP, "--token-file", str(token))  # fmt: skip
        added = time.monotonic()
        await run.send(1, "first from acme", "acme")
        await eventually(lambda: run.was_sent("first from acme"), timeout_s=10)
        first_s = time.monotonic() - added
        sent = await run.sent_text("first from acme")

    assert sent is not None
    assert sent["account"] == "3001"  # its number, with its token
    assert first_s < 10
    assert await dead_letters(deployment) == []


async def test_router_fails_a_disabled_or_unknown_accounts_messages_with_no_call(
    deployment: Deployment, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("tok-acme")
    async with running(deployment) as run:
        await cli(run, "accounts", "app-add", APP, "--secret-file", str(token),
                  "--verify-token-file", str(token))  # fmt: skip
        await cli(run, "accounts", "add", "whatsapp", "acme", "--provider-id", "3001",
                  "--app", APP, "--token-file", str(token))  # fmt: skip
        await cli(run, "accounts", "disable", "whatsapp", "acme")
        disabled = await run.send(1, "to a disabled account", "acme")
        unknown = await run.send(2, "to an unknown account", "nosuch")
        fine = await run.send(3, "from the default account", None)

        async def two_dead_letters() -> bool:
            return len(await dead_letters(deployment)) >= 2

        await eventually(two_dead_letters, timeout_s=20)
        await eventually(lambda: run.was_sent("from the default account"), timeout_s=20)
        sent = [s["text"] for s in await run.sent()]

    dead = {d["dlq.error_type"]: d for d in await dead_letters(deployment)}
    failed = {s["message_id"]: s for s in await statuses(deployment) if s["new_status"] == "FAILED"}
    assert set(dead) == {"account_disabled", "unknown_account"}
    assert "whatsapp/acme is disabled" in dead["account_disabled"]["dlq.reason"]
    assert "no whatsapp account 'nosuch'" in dead["unknown_account"]["dlq.reason"]
    assert set(failed) == {disabled["message_id"], unknown["message_id"]}
    assert sent == [fine["payload"]["content"]]  # neither of the others reached the provider


async def test_router_uses_a_rotated_token_from_the_next_call(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A wrong token pauses that account (its message held, not failed); the rotated token
    makes the next call (the probe, at once) go through with it."""
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.write_text("tok-globex-wrong")
    right.write_text("tok-globex-right")
    async with running(deployment) as run:
        await cli(run, "accounts", "app-add", APP, "--secret-file", str(wrong),
                  "--verify-token-file", str(wrong))  # fmt: skip
        await cli(run, "accounts", "add", "whatsapp", "globex", "--provider-id", "3002",
                  "--app", APP, "--token-file", str(wrong))  # fmt: skip
        held = await run.send(1, "held by a wrong token", "globex")

        async def paused() -> bool:
            _, body = await run.router.readiness()
            account = body.get("accounts", {}).get("whatsapp/globex", {})
            return bool(account.get("state") == "paused")

        await eventually(paused, timeout_s=20, message="globex paused")
        await cli(run, "accounts", "rotate-token", "whatsapp", "globex", "--token-file", str(right))
        rotated = time.monotonic()
        await eventually(lambda: run.was_sent("held by a wrong token"), timeout_s=10)
        resumed_s = time.monotonic() - rotated
        await run.send(2, "after the rotation", "globex")
        await eventually(lambda: run.was_sent("after the rotation"), timeout_s=10)

    sent = [s for s in await statuses(deployment) if s["new_status"] == "SENT"]
    assert held["message_id"] in {s["message_id"] for s in sent}
    assert resumed_s < 5  # the probe went at once with the new token, not after its backoff
    assert await dead_letters(deployment) == []


async def test_router_pauses_only_the_account_whose_token_expired(
    deployment: Deployment, tmp_path: Path
) -> None:
    """One business's expired token pauses that business alone: the other account keeps
    sending meanwhile; nothing is dead-lettered, every message is sent once, in order."""
    token = tmp_path / "token"
    token.write_text("tok-acme")
    async with running(deployment, whatsapp={"max_rate_per_s": 50.0}) as run:
        await cli(run, "accounts", "app-add", APP, "--secret-file", str(token),
                  "--verify-token-file", str(token))  # fmt: skip
        await cli(run, "accounts", "add", "whatsapp", "acme", "--provider-id", "3001",
                  "--app", APP, "--token-file", str(token), "--rate", "50")  # fmt: skip
        await run.expire("3001", expired=True)
        docs = []
        for n in range(40):
            docs.append(await run.send(100 + n % 4, f"acme {n}", "acme"))
            docs.append(await run.send(200 + n % 4, f"default {n}", None))

        async def default_done() -> bool:
            texts = {s["text"] for s in await run.sent()}
            return all(f"default {n}" in texts for n in range(40))

        await eventually(default_done, timeout_s=30, message="the default account's messages")
        acme_while_expired = [s for s in await run.sent() if s["account"] == "3001"]
        await run.expire("3001", expired=False)

        async def all_done() -> bool:
            return len(await run.sent()) >= len(docs)

        await eventually(all_done, timeout_s=30, message="acme's messages after the restore")
        sent = await run.sent()

    acme = [s["text"] for s in sent if s["account"] == "3001"]
    assert acme_while_expired == []  # held while its token was expired, not failed
    assert sorted(acme) == sorted(f"acme {n}" for n in range(40))  # then each sent once
    for conversation in range(4):  # in order per conversation
        mine = [int(t.split()[1]) for t in acme if int(t.split()[1]) % 4 == conversation]
        assert mine == sorted(mine)
    assert await dead_letters(deployment) == []


async def test_router_fails_the_held_sends_of_an_account_disabled_while_paused(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Disabling a paused account ends the wait of the sends it holds: each FAILED and
    dead-lettered as account_disabled, nothing sent; the other accounts unaffected."""
    wrong = tmp_path / "wrong"
    wrong.write_text("tok-globex-wrong")
    async with running(deployment) as run:
        await cli(run, "accounts", "app-add", APP, "--secret-file", str(wrong),
                  "--verify-token-file", str(wrong))  # fmt: skip
        await cli(run, "accounts", "add", "whatsapp", "globex", "--provider-id", "3002",
                  "--app", APP, "--token-file", str(wrong))  # fmt: skip
        held = [await run.send(n, f"held {n}", "globex") for n in range(3)]

        async def three_held() -> bool:
            _, body = await run.router.readiness()
            return bool(body.get("accounts", {}).get("whatsapp/globex", {}).get("held") == 3)

        await eventually(three_held, timeout_s=20, message="three sends held by the pause")
        await cli(run, "accounts", "disable", "whatsapp", "globex")

        async def three_dead() -> bool:
            return len(await dead_letters(deployment)) >= 3

        await eventually(three_dead, timeout_s=10, message="the held sends dead-lettered")
        await run.send(9, "the default goes on", None)
        await eventually(lambda: run.was_sent("the default goes on"), timeout_s=10)
        sent = [s["text"] for s in await run.sent()]

    dead = await dead_letters(deployment)
    failed = {s["message_id"] for s in await statuses(deployment) if s["new_status"] == "FAILED"}
    assert {d["dlq.error_type"] for d in dead} == {"account_disabled"}
    assert failed == {doc["message_id"] for doc in held}
    assert sent == ["the default goes on"]
