"""What each channel takes in one message, checked before any call (a refusal costs nothing).

WhatsApp: a text body of at most 4,096 characters (the Cloud API messages reference, `text.body`).
Instagram: a text of at most 1,000 bytes of UTF-8 (Messenger Platform / Instagram Messaging "Send a
Message").
"""

from __future__ import annotations

from chat4all_workers.errors import ContentLimitError
from chat4all_workers.meta.payloads import OutboundMessage

WHATSAPP_TEXT_CHARACTERS = 4096
INSTAGRAM_TEXT_BYTES = 1000


def check_whatsapp(message: OutboundMessage) -> None:
    """ContentLimitError, naming the limit, for a message WhatsApp cannot take."""
    # Characters as Python counts them (code points); a file's caption is not sent.
    if message.kind == "text" and len(message.text) > WHATSAPP_TEXT_CHARACTERS:
        raise ContentLimitError(
            f"text is {len(message.text)} characters; WhatsApp takes at most "
            f"{WHATSAPP_TEXT_CHARACTERS}"
        )


def check_instagram(message: OutboundMessage) -> None:
    """ContentLimitError, naming the limit, for a message Instagram cannot take."""
    if message.kind == "text":
        size = len(message.text.encode("utf-8"))
        if size > INSTAGRAM_TEXT_BYTES:
            raise ContentLimitError(
                f"text is {size} bytes of UTF-8; Instagram takes at most {INSTAGRAM_TEXT_BYTES}"
            )
