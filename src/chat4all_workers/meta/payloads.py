"""What a send asks of a channel, and the request body each channel's Send API takes for it.

WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with `messaging_product`,
`recipient_type`, `to`, `type` and a type-named object (developers.facebook.com/documentation/
business-messaging/whatsapp/reference/messages). Instagram Messaging: `POST /{version}/
{ig_user_id}/messages` with `recipient.id` and `message` (.../instagram-messaging/features/
send-message). Both carry our callback data (meta/callback.py), which Meta echoes in its webhooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chat4all_workers.meta.callback import callback_data


@dataclass(frozen=True)
class OutboundMessage:
    """What a channel is asked to deliver."""

    message_id: str
    conversation_id: int
    recipient: str
    kind: Literal["text", "file"]
    text: str = ""
    document_url: str = ""
    filename: str = ""
    mime_type: str = ""

    def callback_data(self) -> str:
        """Opaque data the provider echoes in its status webhooks (and the mocks in theirs)."""
        return callback_data(self.message_id, self.conversation_id)


def whatsapp_body(message: OutboundMessage) -> dict[str, Any]:
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


def instagram_body(message: OutboundMessage) -> dict[str, Any]:
    if message.kind == "file":
        content: dict[str, Any] = {
            "attachment": {"type": "file", "payload": {"url": message.document_url}}
        }
    else:
        content = {"text": message.text}
    # `metadata` is echoed back in message webhooks, so statuses find the platform's message.
    content["metadata"] = message.callback_data()
    return {"recipient": {"id": message.recipient}, "message": content}
