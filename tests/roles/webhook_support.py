"""Helpers for the webhooks role's tests: its settings, running it, and signed POSTs as Meta
sends them (channels/meta_webhooks.py writes the payloads)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from hypothesis import strategies as st

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.meta.events import StatusError as ProviderError
from chat4all_workers.meta.notifications import (
    instagram_echo,
    instagram_notification,
    instagram_read,
    whatsapp_notification,
    whatsapp_status,
)
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from chat4all_workers.roles.webhooks import WebhookSettings
from harness.deployment import Deployment

WA_SECRET = "wa-app-secret-for-tests"
IG_SECRET = "ig-app-secret-for-tests"
WA_TOKEN = "wa-verify-token-for-tests"
IG_TOKEN = "ig-verify-token-for-tests"
SECRETS = {"whatsapp": WA_SECRET, "instagram": IG_SECRET}
# The accounts harness.deployment.Deployment configures.
PHONE_NUMBER_ID = "1000"
IG_USER_ID = "2000"


def webhook_settings(deployment: Deployment, **overrides: dict[str, Any]) -> Settings:
    """The deployment's settings with the webhooks role on a free port and test secrets."""
    whatsapp = {"app_secret": WA_SECRET, "verify_token": WA_TOKEN, **overrides.pop("whatsapp", {})}
    instagram = {
        "app_secret": IG_SECRET,
        "verify_token": IG_TOKEN,
        **overrides.pop("instagram", {}),
    }
    return deployment.settings(whatsapp=whatsapp, instagram=instagram, **overrides)


@dataclass
class Endpoint:
    """The running role, seen from outside: its base URL and an HTTP session."""

    base_url: str
    http: aiohttp.ClientSession
    supervisor: App

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
        App(settings, roles=list(roles), serve_http=False) as sup,
        aiohttp.ClientSession() as http,
    ):
        await sup.wait_ready(timeout_s=60)
        yield Endpoint(f"http://127.0.0.1:{settings.section(WebhookSettings).port}", http, sup)


# -- hostile documents (the property tests) -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
# The names Meta's notifications use, so that random documents look like them now and then.
FIELD_NAMES = (
    "object", "entry", "id", "changes", "field", "value", "metadata", "phone_number_id",
    "statuses", "status", "timestamp", "biz_opaque_callback_data", "errors", "messages", "from",
    "type", "text", "contacts", "messaging", "sender", "recipient", "message", "mid", "read",
    "is_echo", "attachments", "payload", "context", "code", "title",
)  # fmt: skip
CALLBACK = orjson.dumps(
    {"message_id": "00000000-0000-4000-8000-000000000007", "conversation_id": 42}
)


def sample_notifications() -> dict[str, dict[str, Any]]:
    """A valid notification per channel, with every kind of event this project reads."""
    callback = CALLBACK.decode()
    failure = ProviderError(131026, "Message undeliverable", "details")
    text = {"from": "55", "id": "wamid.in", "timestamp": "1", "type": "text", "text": {"body": "x"}}
    image = {"from": "55", "id": "wamid.img", "timestamp": "1", "type": "image",
             "image": {"id": "m", "mime_type": "image/png"}}  # fmt: skip
    whatsapp = whatsapp_notification(
        phone_number_id=PHONE_NUMBER_ID,
        statuses=[
            whatsapp_status("wamid.1", "delivered", at_s=1, recipient_id="55",
                            callback_data=callback),
            whatsapp_status("wamid.1", "failed", at_s=2, recipient_id="55",
                            callback_data=callback, error=failure),
        ],
        contacts=[{"profile": {"name": "Ana"}, "wa_id": "55"}],
        messages=[text, image],
    )  # fmt: skip
    ig = IG_USER_ID
    attachment = {"type": "image", "payload": {"url": "u"}}
    inbound = {"sender": {"id": "c"}, "recipient": {"id": ig}, "timestamp": 1,
               "message": {"mid": "mid.3", "text": "hi", "attachments": [attachment]}}  # fmt: skip
    instagram = instagram_notification(
        account_id=ig,
        events=[
            instagram_read("mid.1", customer="c", account_id=ig, at_ms=1),
            instagram_echo("mid.2", customer="c", account_id=ig, at_ms=1, metadata=callback),
            inbound,
        ],
    )
    return {"whatsapp": whatsapp, "instagram": instagram}


def mutate(doc: Any, path: Sequence[int], replacement: Any) -> Any:
    """`doc` with the node that `path` leads to (indices into children, modulo) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return replacement
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[key] = mutate(doc[key], path[1:], replacement)
    return copy


def mutated_notifications(channel: str) -> st.SearchStrategy[Any]:
    """A channel's sample notification as it is, or with one node replaced by an arbitrary
    JSON value (mostly deep inside: near the top, every replacement breaks the whole body)."""
    sample = sample_notifications()[channel]
    return st.just(sample) | st.builds(
        lambda path, value: mutate(sample, path, value),
        st.lists(st.integers(min_value=0, max_value=10), min_size=3, max_size=10),
        JSON_VALUES,
    )


def arbitrary_documents() -> st.SearchStrategy[Any]:
    return JSON_VALUES | st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=6)
