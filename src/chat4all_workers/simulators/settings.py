"""`[mocks]`: how the simulated accounts behave (both mocks share the section).

Every behaviour of a real account is on by default and can be switched off here, so that `make
run` works out of the box (the demo recipients' windows are opened at start-up) and a test can
ask for exactly the provider it wants. supervisor.toml documents each key with its default.
"""

from __future__ import annotations

from dataclasses import field
from typing import ClassVar

from chat4all_workers.config import CHANNELS, NON_EMPTY, ZERO_OK
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.windows import HUMAN_AGENT_WINDOW_S, WINDOW_S
from chat4all_workers.simulators.answers import ASYNC_FAILURES

WINDOW_MODES = ("enforce", "open")
SHARE = {"min": 0, "max": 1}  # a fraction of calls or messages


@frozen(kw_only=True)
class MockSettings:
    """`[mocks]`: the simulated accounts (both mocks share the section)."""

    SECTION: ClassVar[str] = "mocks"

    host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    whatsapp_port: int = field(default=8101, metadata={"min": 0, "max": 65535})
    instagram_port: int = field(default=8102, metadata={"min": 0, "max": 65535})
    latency_ms: float = field(default=0.0, metadata=ZERO_OK)
    error_rate: float = field(default=0.0, metadata=SHARE)
    # The code of those failures (HTTP 500): 0 is the channel's "something went wrong" (131000,
    # 2), an answer that proves nothing (the router waits for the provider's word); 131057
    # (maintenance) proves the message was not taken (retried at once).
    error_code: int = field(default=0, metadata={"min": 0})
    # Like a real account: sends per second per account (0 = unlimited), answered above it as
    # Meta does, HTTP `throttle_status` with code 130429 (WhatsApp) or 613 (Instagram) in the body.
    whatsapp_rate_per_s: float = field(default=80.0, metadata=ZERO_OK)
    instagram_rate_per_s: float = field(default=300.0, metadata=ZERO_OK)
    throttle_status: int = field(default=400, metadata={"choices": (400, 429)})
    # WhatsApp's pair limit per (account, recipient), code 131056 (0 = off).
    pair_burst: int = field(default=45, metadata=ZERO_OK)
    pair_interval_s: float = 6.0
    # An expired token answers every send with HTTP 401 and code 190; also switchable at run
    # time with POST /__mock__/token {"expired": true|false}.
    token_expired: bool = False
    # A send must carry the account's token (`whatsapp.access_token`, `instagram.access_token`)
    # and name its id in the URL (`whatsapp.phone_number_id`, `instagram.user_id`): else HTTP
    # 401 code 190, or HTTP 400 code 100/33. False: any token, any id (the configured account).
    check_credentials: bool = True
    # The customer service window: "enforce" refuses a free-form message (text, media) to a
    # user who has not written within `window_s` (WhatsApp 131047, Instagram 10/2534022);
    # "open" never checks. Instagram's HUMAN_AGENT tag stretches it to `human_agent_window_s`;
    # WhatsApp templates need no window. A user writes with POST /__mock__/inbound.
    windows: str = field(default="enforce", metadata={"choices": WINDOW_MODES})
    window_s: float = float(WINDOW_S)
    human_agent_window_s: float = float(HUMAN_AGENT_WINDOW_S)
    # Users who write to the account at start-up (through the same path, webhooks included):
    # "whatsapp:+5511999990000", "instagram:17841400000000000", or a bare user for both mocks.
    open_windows_for: tuple[str, ...] = ()
    # WhatsApp's approved templates: name -> "language:body_parameter_count" (several languages
    # separated by spaces). Another name or language: HTTP 404 code 132001; another count of
    # body parameters: HTTP 400 code 132000. check_templates = false accepts any template.
    templates: dict[str, str] = field(default_factory=lambda: {"hello_world": "en_US:0"})
    check_templates: bool = True
    # Like Meta, a media message is fetched from its link before it is delivered; a link that
    # does not answer 200 within media_fetch_timeout_s fails the message asynchronously
    # (WhatsApp: a `failed` status, code 131053; Instagram: no webhook at all).
    fetch_media: bool = True
    media_fetch_timeout_s: float = 10.0
    # A share of accepted WhatsApp messages that fail later: `sent`, then `failed` with this
    # code (and Meta's title and details for it) instead of delivered and read.
    async_failure_rate: float = field(default=0.0, metadata=SHARE)
    async_failure_code: int = field(default=131026, metadata={"choices": tuple(ASYNC_FAILURES)})
    # A share of accepted messages answered 504 with a gateway's HTML page (taken all the same).
    gateway_timeout_rate: float = field(default=0.0, metadata=SHARE)
    # A share of calls answered throttled whatever the rate (HTTP 429, code 130429 / 4), the
    # message not taken.
    random_throttle_rate: float = field(default=0.0, metadata=SHARE)
    # Like Meta, the mocks call back with signed status webhooks (signed with the channel's app
    # secret, `whatsapp.app_secret`: the mock plays Meta for this app; no secret, no webhooks):
    # WhatsApp `sent` at once, `delivered` and `read` after these delays; Instagram an echo, then
    # a read receipt after read_after_ms. Retried with backoff until answered 200; flushed on
    # shutdown. Every webhook waits webhook_delay_ms more.
    delivered_after_ms: float = field(default=200.0, metadata=ZERO_OK)
    read_after_ms: float = field(default=500.0, metadata=ZERO_OK)
    webhook_delay_ms: float = field(default=0.0, metadata=ZERO_OK)
    whatsapp_webhook_url: str = "http://127.0.0.1:8200/webhooks/whatsapp"
    instagram_webhook_url: str = "http://127.0.0.1:8200/webhooks/instagram"
    # More accounts than the environment's one (a platform's many businesses), each with its own
    # token, rate and Meta app: provider id -> "channel=whatsapp token=T app=APP secret=S" with
    # an optional "rate=N" (default: the channel's rate above). Each signs its webhooks with
    # its app's secret and posts them to `{channel}_webhook_url/{app}` (the app's own URL).
    accounts: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[tuple[str, str]]:
        """What the loader reports (config.py): the values the field rules cannot check."""
        found = []
        for entry in self.open_windows_for:
            channel, user = _qualified(entry)
            if channel is not None and channel not in CHANNELS:
                found.append(("open_windows_for", f"{entry!r}: unknown channel {channel!r}"))
            elif not user:
                found.append(("open_windows_for", f"{entry!r}: no user"))
        for name, value in self.templates.items():
            try:
                _languages(value)
            except ValueError as exc:
                found.append(("templates", f"{name}: {exc}"))
        for provider_id, value in self.accounts.items():
            try:
                _account(provider_id, value)
            except ValueError as exc:
                found.append(("accounts", f"{provider_id}: {exc}"))
        return found

    def more_accounts(self, channel: str) -> list[MoreAccount]:
        """The `accounts` of `channel`."""
        chosen = (_account(pid, value) for pid, value in self.accounts.items())
        return [account for account in chosen if account.channel == channel]

    def users_to_open(self, channel: str) -> list[str]:
        """The users of `open_windows_for` who write to `channel`'s account at start-up."""
        users = []
        for entry in self.open_windows_for:
            qualifier, user = _qualified(entry)
            if qualifier in (None, channel):
                users.append(user)
        return users

    def template_params(self) -> dict[tuple[str, str], int]:
        """(name, language) -> the number of body parameters, of every approved template."""
        return {
            (name, language): count
            for name, value in self.templates.items()
            for language, count in _languages(value).items()
        }


@frozen
class MoreAccount:
    """One of `accounts`."""

    channel: str
    provider_id: str
    token: str
    app: str
    secret: str
    rate_per_s: float | None


_ACCOUNT_KEYS = frozenset({"channel", "token", "app", "secret", "rate"})


def _account(provider_id: str, value: str) -> MoreAccount:
    """ "channel=whatsapp token=T app=A secret=S rate=80" -> a MoreAccount."""
    fields: dict[str, str] = {}
    for part in value.split():
        name, equals, text = part.partition("=")
        if not equals or name not in _ACCOUNT_KEYS or not text:
            raise ValueError(
                f"expected name=value with a name of {sorted(_ACCOUNT_KEYS)}, got {part!r}"
            )
        fields[name] = text
    missing = sorted({"channel", "token", "app", "secret"} - set(fields))
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if fields["channel"] not in CHANNELS:
        raise ValueError(f"unknown channel {fields['channel']!r}")
    rate = fields.get("rate")
    try:
        rate_per_s = None if rate is None else float(rate)
    except ValueError:
        raise ValueError(f"rate: not a number: {rate!r}") from None
    return MoreAccount(
        fields["channel"], provider_id, fields["token"], fields["app"], fields["secret"], rate_per_s
    )


def _qualified(entry: str) -> tuple[str | None, str]:
    """ "channel:user" -> (channel, user); a bare user -> (None, user). No user id has a colon."""
    channel, colon, user = entry.partition(":")
    return (channel, user.strip()) if colon else (None, entry.strip())


def _languages(value: str) -> dict[str, int]:
    """ "en_US:0 pt_BR:2" -> {"en_US": 0, "pt_BR": 2}."""
    languages = {}
    for part in value.split():
        language, colon, count = part.partition(":")
        if not (language and colon and count.isascii() and count.isdigit()):
            raise ValueError(f'expected "language:body_parameter_count", got {part!r}')
        languages[language] = int(count)
    if not languages:
        raise ValueError('expected "language:body_parameter_count", got nothing')
    return languages
