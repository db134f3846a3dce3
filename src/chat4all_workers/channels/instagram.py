"""Instagram Messaging API: `POST {base_url}/{version}/{ig_user_id}/messages`.

Its limits (Meta's numbers): the Send API takes 300 calls/s per Instagram professional account
for text, links, reactions and stickers (10/s for audio and video). The router paces sends
(`instagram.max_rate_per_s`, default 250: headroom under 300). Meta documents no pair limit for
Instagram (only that "too many messages to a single thread" may be limited), so pair pacing is
off by default. What a message may hold (meta/limits.py), the request body (meta/payloads.py)
and the error codes (meta/errors.py) are Meta's protocol, written once there. Sources (read
2026): "Rate limits" (developers.facebook.com/docs/messenger-platform/overview/rate-limiting:
300 calls/s per Instagram professional account for text), "Send a Message"
(.../instagram-messaging/features/send-message).
"""

from __future__ import annotations

from chat4all_workers.channels.base import SendResult, post_json
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import InstagramSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.errors import TransientProviderError
from chat4all_workers.meta.errors import INSTAGRAM_CODES
from chat4all_workers.meta.payloads import OutboundMessage, instagram_body


class InstagramAdapter:
    name = "instagram"

    def __init__(
        self,
        settings: InstagramSettings,
        http: HttpClient,
        *,
        provider_id: str | None = None,
        token: Secret | None = None,
    ) -> None:
        """`provider_id` and `token`: the sending account's (accounts/); by default the
        environment's single account, from `settings`."""
        self._settings = settings
        self._http = http
        self.account = settings.user_id if provider_id is None else provider_id
        self._token = settings.access_token if token is None else token
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{self.account}/messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        answer = await post_json(
            self._http,
            self._url,
            token=self._token.get(),
            body=instagram_body(message),
            timeout_s=self._settings.timeout_s,
            codes=INSTAGRAM_CODES,
        )
        message_id = answer.get("message_id")
        if not message_id:
            raise TransientProviderError("success answer without a message_id", in_doubt=True)
        return SendResult(str(message_id))

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP client belongs to the process."""
