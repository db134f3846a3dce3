"""WhatsApp Cloud API: `POST {base_url}/{version}/{phone_number_id}/messages`.

Its limits (Meta's numbers): 80 messages/s per business phone number by default (up to 1,000
after an automatic upgrade; 20 for numbers shared with the WhatsApp Business app; inbound
messages count too), over it code 130429; per (business number, recipient) a burst of about 45
messages, then about one every 6 s ("pair rate limit"), over it code 131056; a text body of at
most 4,096 characters. The router paces sends to both (`whatsapp.max_rate_per_s`,
`whatsapp.pair_burst`, `whatsapp.pair_interval_s`) and checks the text before any call.

`CODES` is the one table of this channel's error codes (on top of the Graph API's own,
channels/base.py). Sources (read 2026): "Error codes"
(developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes),
"Throughput" (.../whatsapp/throughput: 80 mps, 1,000 mps, 130429), "Pair rate limits"
(.../whatsapp/messaging-limits: 1 message per 6 s to one user, bursts up to 45, 131056), the
messages reference (text.body at most 4,096 characters).
"""

from __future__ import annotations

from typing import Any

from chat4all_workers.channels.base import (
    ACCOUNT,
    GRAPH_API_CODES,
    PAIR_THROTTLED,
    REJECTED,
    THROTTLED,
    TRANSIENT,
    CodeTable,
    OutboundMessage,
    SendResult,
    post_json,
)
from chat4all_workers.channels.http import HttpClient
from chat4all_workers.config import WhatsAppSettings
from chat4all_workers.errors import ContentLimitError, TransientProviderError

TEXT_LIMIT_CHARACTERS = 4096

CODES: CodeTable = {
    **GRAPH_API_CODES,
    # throttled: the message was not taken; wait for the pace
    130429: THROTTLED,  # Rate limit hit: the number's throughput
    131048: THROTTLED,  # Spam rate limit hit: fewer messages for a while
    131056: PAIR_THROTTLED,  # (Business, Consumer) pair rate limit hit
    80007: THROTTLED,  # the WhatsApp Business Account's rate limit
    # transient: failed this once
    131000: TRANSIENT,  # Something went wrong
    131016: TRANSIENT,  # Service unavailable
    131057: TRANSIENT,  # Account in maintenance mode (e.g. a throughput upgrade, ~1 min)
    133004: TRANSIENT,  # Server temporarily unavailable
    # rejected: this message, for good
    130472: REJECTED,  # The user's number is part of an experiment
    130497: REJECTED,  # The business cannot message users in this country
    131008: REJECTED,  # Required parameter is missing
    131009: REJECTED,  # Parameter value is not valid
    131021: REJECTED,  # Recipient cannot be the sender
    131026: REJECTED,  # Message undeliverable (not on WhatsApp, blocked, old app, ...)
    131047: REJECTED,  # Re-engagement message: outside the 24 h customer-service window
    131049: REJECTED,  # Meta chose not to deliver it (per-user marketing limit)
    131050: REJECTED,  # The user stopped marketing messages
    131051: REJECTED,  # Unsupported message type
    131052: REJECTED,  # Media download error
    131053: REJECTED,  # Media upload error
    # account: every message fails alike until an operator acts
    131031: ACCOUNT,  # Account has been locked
    131042: ACCOUNT,  # Business eligibility / payment issue
    131045: ACCOUNT,  # Incorrect certificate (the number is not registered)
    133010: ACCOUNT,  # Phone number not registered
}


class WhatsAppAdapter:
    name = "whatsapp"

    def __init__(self, settings: WhatsAppSettings, http: HttpClient) -> None:
        self._settings = settings
        self._http = http
        self.account = settings.phone_number_id
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{settings.phone_number_id}/messages"

    def check_content(self, message: OutboundMessage) -> None:
        # Characters as Python counts them (code points); a file's caption is not sent.
        if message.kind == "text" and len(message.text) > TEXT_LIMIT_CHARACTERS:
            raise ContentLimitError(
                f"text is {len(message.text)} characters; WhatsApp takes at most "
                f"{TEXT_LIMIT_CHARACTERS}"
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
        try:
            return SendResult(str(answer["messages"][0]["id"]))
        except (KeyError, IndexError, TypeError):
            raise TransientProviderError(
                "success answer without a message id", in_doubt=True
            ) from None

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
