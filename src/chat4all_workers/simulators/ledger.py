"""What a mock saw: the messages it accepted (`GET /__mock__/sent`) and its requests and events
counted by outcome (`GET /__mock__/stats`), so a developer or a test can tell exactly what was
taken and how often it was refused."""

from __future__ import annotations

from collections import deque

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.windows import user_key

MAX_REMEMBERED = 100_000  # accepted messages kept for /__mock__/sent
OUTCOMES = (
    "requests", "accepted", "throttled", "randomly_throttled", "pair_throttled", "unauthorized",
    "unknown_account", "rejected", "window_closed", "template_rejected", "failed",
    "gateway_timeout", "async_failed", "media_fetched", "media_failed", "inbound",
)  # fmt: skip


@frozen
class Accepted:
    provider_message_id: str
    message_id: str | None
    conversation_id: int | None
    recipient: str
    text: str
    accepted_at: float
    account: str
    kind: str = "text"  # text, template, or the media type it went as


class Ledger:
    def __init__(self, channel: str, *, max_remembered: int = MAX_REMEMBERED) -> None:
        self._channel = channel
        self.accepted: deque[Accepted] = deque(maxlen=max_remembered)
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def accept(self, accepted: Accepted) -> None:
        self.accepted.append(accepted)
        self.count("accepted")

    def last_sent_to(self, account_id: str, user: str) -> str:
        """The newest message the account sent the user, or ""."""
        key = user_key(self._channel, user)
        for accepted in reversed(self.accepted):
            same_user = user_key(self._channel, accepted.recipient) == key
            if accepted.account == account_id and same_user:
                return accepted.provider_message_id
        return ""
