"""WhatsApp Cloud API: `POST {base_url}/{version}/{phone_number_id}/messages`."""

from __future__ import annotations

from typing import Any

from chat4all_workers.channels.base import OutboundMessage, SendResult, post_json
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import WhatsAppSettings
from chat4all_workers.errors import RetryableError


class WhatsAppAdapter:
    name = "whatsapp"

    def __init__(self, settings: WhatsAppSettings, http: HttpClient) -> None:
        self._settings = settings
        self._http = http
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{settings.phone_number_id}/messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        answer = await post_json(
            self._http,
            self._url,
            token=self._settings.access_token.get(),
            body=self.body(message),
            timeout_s=self._settings.timeout_s,
            channel=self.name,
        )
        try:
            return SendResult(str(answer["messages"][0]["id"]))
        except (KeyError, IndexError, TypeError):
            raise RetryableError("whatsapp: success answer without a message id") from None

    @staticmethod
    def body(message: OutboundMessage) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.recipient,
            # Echoed back in the status webhooks, so statuses find the platform's message.
            "biz_opaque_callback_data": message.callback_data(),
        }
        if message.kind == "file":
            body["type"] = "document"
            body["document"] = {"link": message.document_url, "filename": message.filename}
        else:
            body["type"] = "text"
            body["text"] = {"body": message.text, "preview_url": False}
        return body

    async def aclose(self) -> None:
        """Nothing of its own to close: the HTTP client belongs to the process."""
