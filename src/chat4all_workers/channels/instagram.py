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

from typing import Any

from chat4all_workers.channels.base import MetaAdapter
from chat4all_workers.errors import TransientProviderError
from chat4all_workers.meta.errors import INSTAGRAM_CODES
from chat4all_workers.meta.payloads import instagram_body


class InstagramAdapter(MetaAdapter):
    name = "instagram"
    codes = INSTAGRAM_CODES
    body = staticmethod(instagram_body)

    def message_id(self, answer: dict[str, Any]) -> str:
        message_id = answer.get("message_id")
        if not message_id:
            raise TransientProviderError("success answer without a message_id", in_doubt=True)
        return str(message_id)
