"""One simulated account: its credentials, its limits, its users' windows, where its webhooks go.

A mock serves its accounts keyed by their provider id (the WhatsApp phone number id, the
Instagram account id), each with its own token, rate, pair limits, customer service windows,
webhook URL and app secret. Today each mock has the one account of the settings
(`whatsapp.phone_number_id`, `instagram.user_id`); several would each be one more `Account`.
"""

from __future__ import annotations

from chat4all_workers.channels.http import HttpClient
from chat4all_workers.frozen import frozen
from chat4all_workers.simulators.callbacks import Callbacks
from chat4all_workers.simulators.settings import MockSettings

_MAX_KEYS = 100_000  # pair states or users' windows kept per account before the expired go


class Gcra:
    """A limit of `interval_s` per send with a burst of `burst`, per key (GCRA: the key's
    theoretical arrival time). A refused send does not count."""

    def __init__(self, *, interval_s: float, burst: float) -> None:
        self._interval_s = interval_s
        self._tolerance_s = max(0.0, burst - 1) * interval_s
        self._tat: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        tat = max(self._tat.get(key, now), now)
        if tat - self._tolerance_s > now:
            return False
        if len(self._tat) >= _MAX_KEYS and key not in self._tat:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        self._tat[key] = tat + self._interval_s
        return True


class Windows:
    """When each user last wrote to the account (Unix seconds): their customer service window."""

    def __init__(self, *, longest_s: float) -> None:
        self._longest_s = longest_s  # older than this, no window is open any more
        self._last: dict[str, float] = {}

    def record(self, user: str, at_s: float, *, now_s: float) -> None:
        """The user wrote at `at_s`; the window runs from their latest message."""
        if len(self._last) >= _MAX_KEYS and user not in self._last:
            self._last = {u: t for u, t in self._last.items() if now_s - t <= self._longest_s}
        self._last[user] = max(at_s, self._last.get(user, at_s))

    def age_s(self, user: str, now_s: float) -> float | None:
        """Seconds since the user last wrote; None if they never did."""
        last = self._last.get(user)
        return None if last is None else now_s - last


@frozen
class AccountConfig:
    """What one simulated account is."""

    id: str  # the phone number id / Instagram account id: the send URL names it
    access_token: str
    rate_per_s: float  # sends per second (0: unlimited)
    webhook_url: str
    app_secret: str  # signs its webhooks


class Account:
    """One account's state: its limits, its users' windows, its webhooks."""

    def __init__(
        self, config: AccountConfig, settings: MockSettings, *, channel: str, http: HttpClient
    ) -> None:
        self.id = config.id
        self.access_token = config.access_token
        self.token_expired = settings.token_expired
        rate = config.rate_per_s
        # A burst of up to one second's worth, then the rate: what a client pacing at the rate
        # never notices, and one pacing faster soon does.
        self.rate = Gcra(interval_s=1 / rate, burst=rate) if rate else None
        pair = channel == "whatsapp" and settings.pair_burst > 0 and settings.pair_interval_s > 0
        self.pairs = (
            Gcra(interval_s=settings.pair_interval_s, burst=settings.pair_burst) if pair else None
        )
        self.windows = Windows(longest_s=max(settings.window_s, settings.human_agent_window_s))
        self.callbacks = Callbacks(
            http,
            name=channel,
            url=config.webhook_url,
            secret=config.app_secret,
            delay_s=settings.webhook_delay_ms / 1000,
        )
