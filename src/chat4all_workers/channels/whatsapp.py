"""WhatsApp Cloud API: `POST {base_url}/{version}/{phone_number_id}/messages`.

Its limits (Meta's numbers): 80 messages/s per business phone number by default (up to 1,000
after an automatic upgrade; 20 for numbers shared with the WhatsApp Business app; inbound
messages count too), over it code 130429; per (business number, recipient) a burst of about 45
messages, then about one every 6 s ("pair rate limit"), over it code 131056. The router paces
sends to both (`whatsapp.max_rate_per_s`, `whatsapp.pair_burst`, `whatsapp.pair_interval_s`);
what a message may hold (meta/limits.py), the request body (meta/payloads.py) and the error
codes (meta/errors.py) are Meta's protocol, written once there. Sources (read 2026):
"Throughput" (developers.facebook.com/documentation/business-messaging/whatsapp/throughput: 80
mps, 1,000 mps, 130429), "Pair rate limits" (.../whatsapp/messaging-limits: 1 message per 6 s to
one user, bursts up to 45, 131056).
"""

from __future__ import annotations

from typing import Any

from chat4all_workers.channels.base import MetaAdapter
from chat4all_workers.errors import TransientProviderError
from chat4all_workers.meta.errors import WHATSAPP_CODES
from chat4all_workers.meta.payloads import whatsapp_body


class WhatsAppAdapter(MetaAdapter):
    name = "whatsapp"
    codes = WHATSAPP_CODES
    body = staticmethod(whatsapp_body)

    def message_id(self, answer: dict[str, Any]) -> str:
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise TransientProviderError(
                "success answer without a message id", in_doubt=True
            ) from None
