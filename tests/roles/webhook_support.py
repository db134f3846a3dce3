"""Helpers for the webhooks role's tests: its settings, running it, and signed POSTs as Meta
sends them (channels/meta_webhooks.py writes the payloads)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from chat4all_workers.channels.meta_webhooks import SIGNATURE_HEADER, sign
from chat4all_workers.config import Settings
from chat4all_workers.supervisor import Supervisor
from tests.support import Deployment, free_port

WA_SECRET = "wa-app-secret-for-tests"
IG_SECRET = "ig-app-secret-for-tests"
WA_TOKEN = "wa-verify-token-for-tests"
IG_TOKEN = "ig-verify-token-for-tests"
SECRETS = {"whatsapp": WA_SECRET, "instagram": IG_SECRET}
# The accounts tests.support.Deployment configures.
PHONE_NUMBER_ID = "1000"
IG_USER_ID = "2000"


def webhook_settings(deployment: Deployment, **overrides: dict[str, Any]) -> Settings:
    """The deployment's settings with the webhooks role on a free port and test secrets."""
    webhooks = {
        "port": free_port(),
        "whatsapp_app_secret": WA_SECRET,
        "instagram_app_secret": IG_SECRET,
        "whatsapp_verify_token": WA_TOKEN,
        "instagram_verify_token": IG_TOKEN,
        **overrides.pop("webhooks", {}),
    }
    return deployment.settings(webhooks=webhooks, **overrides)


@dataclass
class Endpoint:
    """The running role, seen from outside: its base URL and an HTTP session."""

    base_url: str
    http: aiohttp.ClientSession
    supervisor: Supervisor

    def url(self, channel: str) -> str:
        return f"{self.base_url}/webhooks/{channel}"

    async def post(
        self,
        channel: str,
        body: bytes | dict[str, Any],
        *,
        secret: str | None = None,
        signature: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """POST signed with the channel's secret (or `secret`, or exactly `signature`);
        (status, JSON answer)."""
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        headers = {"Content-Type": content_type}
        if signature is None:
            signature = sign(secret or SECRETS[channel], raw)
        if signature:
            headers[SIGNATURE_HEADER] = signature
        async with self.http.post(self.url(channel), data=raw, headers=headers) as response:
            answer = await response.read()
            return response.status, orjson.loads(answer) if answer.startswith(b"{") else {}


@contextlib.asynccontextmanager
async def running(
    settings: Settings, roles: Sequence[str] = ("webhooks",)
) -> AsyncIterator[Endpoint]:
    """The roles running in this process until the block ends (then drained)."""
    async with (
        Supervisor(settings, roles=list(roles), serve_http=False) as sup,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(timeout_s=60)
        yield Endpoint(f"http://127.0.0.1:{settings.webhooks.port}", http, sup)
