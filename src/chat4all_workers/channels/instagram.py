"""Instagram Messaging API: `POST {base_url}/{version}/{ig_user_id}/messages`."""

from __future__ import annotations

from typing import Any

from chat4all_workers.channels.base import OutboundMessage, SendResult, post_json
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import InstagramSettings
from chat4all_workers.errors import RetryableError


class InstagramAdapter:
    name = "instagram"

    def __init__(self, settings: InstagramSettings, http: HttpClient) -> None:
        self._settings = settings
        self._http = http
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{settings.user_id}/messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        answer = await post_json(
            self._http,
            self._url,
            token=self._settings.access_token.get(),
            body=self.body(message),
            timeout_s=self._settings.timeout_s,
            channel=self.name,
        )
        message_id = answer.get("message_id")
        if not message_id:
            raise RetryableError("instagram: success answer without a message_id")
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
