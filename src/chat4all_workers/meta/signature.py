"""Meta's webhook signature and verification request, without I/O.

- Verification. When a callback URL is configured in the app dashboard, Meta sends
  `GET <url>?hub.mode=subscribe&hub.challenge=<n>&hub.verify_token=<the token typed in the
  dashboard>`; the endpoint answers 200 with the challenge as the body when the token matches.
  https://developers.facebook.com/docs/graph-api/webhooks/getting-started/
- Signature. Every event notification is a POST of JSON signed with the app secret:
  `X-Hub-Signature-256: sha256=<lower-case hex HMAC-SHA256 of the raw body>`. It must be checked
  over the bytes as received, before parsing (re-serialised JSON does not match).
  (same page, "Validating Payloads")
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Hub-Signature-256"
_SIGNATURE_PREFIX = b"sha256="


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends with `body` (tests, benchmarks, the mocks)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the body's signature with `secret`; compared in constant time."""
    if not header or not secret:
        return False
    expected = (
        _SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    )
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


def challenge_answer(query: Mapping[str, str], verify_token: str) -> str | None:
    """The body to answer a verification GET with, or None to refuse it (403)."""
    if not verify_token or query.get("hub.mode") != "subscribe":
        return None
    token = query.get("hub.verify_token", "").encode("utf-8", "replace")
    if not hmac.compare_digest(token, verify_token.encode()):
        return None
    return query.get("hub.challenge") or None
