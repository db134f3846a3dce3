"""What a send asks of a channel, and the request body each channel's Send API takes for it.

WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages` with `messaging_product`,
`recipient_type`, `to`, `type` and a type-named object: `text {body}`, `image|video|document
{link, caption?, filename? (document)}`, `audio|sticker {link}`, `template {name, language,
components}` (developers.facebook.com/documentation/business-messaging/whatsapp/messages/
send-messages, the per-type pages, templates/overview). Instagram Messaging: `POST /{version}/
{ig_user_id}/messages` with `recipient.id` and `message {text}` or `message {attachment {type,
payload {url}}}`; a human agent's message outside the standard window carries
`messaging_type: "MESSAGE_TAG", tag: "HUMAN_AGENT"` (.../instagram-messaging/features/
send-message; human-agent-escalation). Both carry our callback data (meta/callback.py), which
Meta echoes in its webhooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.callback import callback_data

HUMAN_AGENT = "HUMAN_AGENT"


@frozen
class OutboundMessage:
    """What one channel is asked to deliver (built per channel: the media type is the
    channel's)."""

    message_id: str
    conversation_id: int
    recipient: str
    kind: Literal["text", "media", "template"]
    text: str = ""  # the text, or a media's caption
    media_url: str = ""
    media_type: str = ""  # the channel's name of it: image, video, audio, document, sticker, file
    filename: str = ""
    caption: bool = False  # the media type takes a caption
    template: Mapping[str, Any] | None = None
    tag: str | None = None  # Instagram's message tag (HUMAN_AGENT), when the window needs it
    origin: str = ""  # the record being sent, "{topic}:{partition}:{offset}" (callback data)

    def callback_data(self) -> str:
        """Opaque data the provider echoes in its status webhooks (and the mocks in theirs)."""
        return callback_data(self.message_id, self.conversation_id, origin=self.origin)


def whatsapp_body(message: OutboundMessage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": message.recipient,
        # Echoed back in the status webhooks, so statuses find the platform's message.
        "biz_opaque_callback_data": message.callback_data(),
    }
    if message.kind == "media":
        media: dict[str, Any] = {"link": message.media_url}
        if message.caption and message.text:
            media["caption"] = message.text
        if message.media_type == "document" and message.filename:
            media["filename"] = message.filename
        body["type"] = message.media_type
        body[message.media_type] = media
    elif message.kind == "template":
        body["type"] = "template"
        body["template"] = dict(message.template or {})
    else:
        body["type"] = "text"
        body["text"] = {"body": message.text, "preview_url": False}
    return body


def instagram_body(message: OutboundMessage) -> dict[str, Any]:
    if message.kind == "media":
        content: dict[str, Any] = {
            "attachment": {"type": message.media_type, "payload": {"url": message.media_url}}
        }
    else:
        content = {"text": message.text}
    # `metadata` is echoed back in message webhooks, so statuses find the platform's message.
    content["metadata"] = message.callback_data()
    body: dict[str, Any] = {"recipient": {"id": message.recipient}, "message": content}
    if message.tag is not None:
        body["messaging_type"] = "MESSAGE_TAG"
        body["tag"] = message.tag
    return body
