"""Instagram Messaging API: `POST {base_url}/{version}/{ig_user_id}/messages`.

Its limits (Meta's numbers): the Send API takes 300 calls/s per Instagram professional account
for text, links, reactions and stickers (10/s for audio and video); a text is UTF-8 and at most
1,000 bytes. The router paces sends (`instagram.max_rate_per_s`, default 250: headroom under
300) and checks the text before any call. Meta documents no pair limit for Instagram (only that
"too many messages to a single thread" may be limited), so pair pacing is off by default.

`CODES` is the one table of this channel's error codes (on top of the Graph API's own,
channels/base.py). Sources (read 2026): Messenger Platform "Common Error Codes" and Send API
error codes (developers.facebook.com/docs/messenger-platform/error-codes: 1200, 551, 100/2018001,
10/2018278, 4, 613), "Rate limits" (.../messenger-platform/overview/rate-limiting: 300 calls/s
per Instagram professional account for text), "Send a Message" (.../instagram-messaging/
features/send-message).
"""

from __future__ import annotations

from typing import Any

from chat4all_workers.channels.base import (
    GRAPH_API_CODES,
    REJECTED,
    TRANSIENT,
    CodeTable,
    OutboundMessage,
    SendResult,
    post_json,
)
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import InstagramSettings
from chat4all_workers.errors import ContentLimitError, TransientProviderError

TEXT_LIMIT_BYTES = 1000

CODES: CodeTable = {
    **GRAPH_API_CODES,
    1200: TRANSIENT,  # Temporary send message failure
    551: REJECTED,  # This person isn't available right now
    (100, 2018001): REJECTED,  # No matching user found
    (10, 2018278): REJECTED,  # Sent outside the allowed (24 h) window: this message, not the token
}


class InstagramAdapter:
    name = "instagram"

    def __init__(self, settings: InstagramSettings, http: HttpClient) -> None:
        self._settings = settings
        self._http = http
        self.account = settings.user_id
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{settings.user_id}/messages"

    def check_content(self, message: OutboundMessage) -> None:
        if message.kind == "text":
            size = len(message.text.encode("utf-8"))
            if size > TEXT_LIMIT_BYTES:
                raise ContentLimitError(
                    f"text is {size} bytes of UTF-8; Instagram takes at most {TEXT_LIMIT_BYTES}"
                )

    async def send(self, message: OutboundMessage) -> SendResult:
        answer = await post_json(
            self._http,
            self._url,
            token=self._settings.access_token.get(),
            body=self.body(message),
            timeout_s=self._settings.timeout_s,
            codes=CODES,
        )
        message_id = answer.get("message_id")
        if not message_id:
            raise TransientProviderError("success answer without a message_id", in_doubt=True)
        return SendResult(str(message_id))

    @staticmethod
    def body(message: OutboundMessage) -> dict[str, Any]:
        if message.kind == "file":
            content: dict[str, Any] = {
                "attachment": {"type": "file", "payload": {"url": message.document_url}}
            }
        else:
            content = {"text": message.text}
        # `metadata` is echoed back in message webhooks, so statuses find the platform's message.
        content["metadata"] = message.callback_data()
        return {"recipient": {"id": message.recipient}, "message": content}

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP client belongs to the process."""
