"""Meta's webhook signature and verification answer (meta/signature.py), without I/O."""

from __future__ import annotations

import hashlib
import hmac

from chat4all_workers.meta.signature import challenge_answer, sign, signature_matches


def test_sign_is_hmac_sha256_hex_with_the_prefix() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    expected = hmac.new(b"app-secret", body, hashlib.sha256).hexdigest()
    assert sign("app-secret", body) == f"sha256={expected}"


def test_signature_matches_only_the_right_secret_and_bytes() -> None:
    body = b'{"a": 1}'
    good = sign("s3cret", body)
    assert signature_matches("s3cret", body, good)
    assert signature_matches("s3cret", body, good.upper())  # hex case does not matter
    assert not signature_matches("other", body, good)
    assert not signature_matches("s3cret", body + b" ", good)
    assert not signature_matches("s3cret", body, None)
    assert not signature_matches("s3cret", body, "")
    assert not signature_matches("s3cret", body, good.replace("sha256=", "sha1="))
    assert not signature_matches("s3cret", body, "sha256=\u00e9\u202e")
    assert not signature_matches("", body, sign("", body))  # no secret: nothing is signed


def test_challenge_answer_needs_subscribe_and_the_token() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "1158201444"}
    assert challenge_answer(query, "tok") == "1158201444"
    assert challenge_answer({**query, "hub.verify_token": "nope"}, "tok") is None
    assert challenge_answer({**query, "hub.mode": "unsubscribe"}, "tok") is None
    assert challenge_answer({k: v for k, v in query.items() if k != "hub.challenge"}, "tok") is None
    assert challenge_answer({**query, "hub.verify_token": ""}, "") is None  # no token: refuse
