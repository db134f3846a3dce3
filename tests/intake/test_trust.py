"""Which app signed a notification, and which accounts it may speak for (intake/trust.py)."""

from __future__ import annotations

import hashlib
import hmac

from chat4all_workers.accounts.model import Account, FixedDirectory, MetaApp
from chat4all_workers.config_values import Secret
from chat4all_workers.intake.trust import Trust

BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def app(app_id: str, secret: str, token: str = "") -> MetaApp:
    return MetaApp(app_id=app_id, secret=Secret(secret), verify_token=Secret(token or secret))


def account(channel: str, key: str, provider_id: str, app_id: str) -> Account:
    return Account(
        channel=channel,
        key=key,
        provider_id=provider_id,
        app_id=app_id,
        token=Secret("t"),
        max_rate_per_s=80.0,
        pair_burst=45,
        pair_interval_s=6.0,
    )


def sign(secret: str, body: bytes = BODY) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def two_apps() -> Trust:
    return Trust(
        FixedDirectory(
            [
                account("whatsapp", "acme", "1001", "app-a"),
                account("whatsapp", "globex", "2001", "app-b"),
                account("instagram", "acme", "17841", "app-a"),
            ],
            [app("app-a", "secret-a"), app("app-b", "secret-b")],
        )
    )


def test_trust_finds_the_app_whose_secret_signed_the_body() -> None:
    trust = two_apps()

    assert trust.signers("whatsapp", None, BODY, sign("secret-a")) == {"app-a"}
    assert trust.signers("whatsapp", None, BODY, sign("secret-b")) == {"app-b"}
    assert trust.signers("whatsapp", None, BODY, sign("nobody's")) == frozenset()
    assert trust.signers("whatsapp", None, BODY, None) == frozenset()


def test_trust_on_an_apps_own_path_tries_only_that_apps_secret() -> None:
    trust = two_apps()

    assert trust.signers("whatsapp", "app-a", BODY, sign("secret-a")) == {"app-a"}
    assert trust.signers("whatsapp", "app-a", BODY, sign("secret-b")) == frozenset()
    assert trust.signers("whatsapp", "no-such-app", BODY, sign("secret-a")) == frozenset()


def test_trust_lets_an_app_speak_only_for_its_own_accounts() -> None:
    trust = two_apps()

    ours_a = trust.ours("whatsapp", frozenset({"app-a"}))
    ours_b = trust.ours("whatsapp", frozenset({"app-b"}))

    assert (ours_a("1001"), ours_a("2001"), ours_a("9999")) == (True, False, False)
    assert (ours_b("1001"), ours_b("2001")) == (False, True)
    assert trust.ours("instagram", frozenset({"app-a"}))("17841")
    assert trust.account_key("whatsapp", "2001") == "globex"
    assert trust.account_key("whatsapp", "9999") is None


def test_trust_keeps_a_webhooks_only_environment_working() -> None:
    """The environment's app with no phone number id configured speaks for any id of its
    channel, as the single-account deployment always did; not for the other channel."""
    directory = FixedDirectory([], [app("default-whatsapp", "s"), app("default-instagram", "s")])
    trust = Trust(directory)

    assert trust.ours("whatsapp", frozenset({"default-whatsapp"}))("any-number")
    assert not trust.ours("instagram", frozenset({"default-whatsapp"}))("any-account")


def test_trust_skips_the_other_channels_environment_app_on_the_shared_path() -> None:
    directory = FixedDirectory(
        [], [app("default-whatsapp", ""), app("default-instagram", "ig-secret")]
    )
    trust = Trust(directory)

    assert trust.candidates("whatsapp", None) == []  # 403: no WhatsApp app secret
    assert [a.app_id for a in trust.candidates("instagram", None)] == ["default-instagram"]


def test_trust_answers_the_verification_get_with_any_known_apps_token() -> None:
    trust = Trust(FixedDirectory([], [app("app-a", "s", "token-a"), app("app-b", "s", "token-b")]))
    query = {"hub.mode": "subscribe", "hub.challenge": "42"}

    assert trust.challenge("whatsapp", None, {**query, "hub.verify_token": "token-b"}) == "42"
    assert trust.challenge("whatsapp", "app-a", {**query, "hub.verify_token": "token-b"}) is None
    assert trust.challenge("whatsapp", None, {**query, "hub.verify_token": "nope"}) is None
