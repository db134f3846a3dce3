"""Meta's error answers, classified: the one code table per channel, and what an answer means.

Meta asks clients to handle errors by the Graph API error object's `code`, not by the HTTP
status: throttling commonly comes back as HTTP 400 with code 130429 in the body. So an error
answer's object (`error.code`, `error.error_subcode`, `error.message`,
`error.error_data.details`, `error.fbtrace_id`) is looked up in the channel's ONE table
(`CodeTable`: code, or (code, subcode) for a subcode that changes the meaning, -> `Verdict`),
built on the Graph API codes every Meta API shares (`GRAPH_API_CODES`). An answer without a known
code falls back to its HTTP status: 429 throttled, 5xx transient, 401 and 403 account, any other
4xx rejected. Four classes, each an exception of errors.py: ThrottledError (wait for the pace,
never a spent attempt), TransientProviderError (backoff, counted), ProviderRejectedError (this
message, for good), AccountError (the sending account: pause the channel).

Error texts carry no channel name (the router prefixes it once) and never our request: access
tokens go only into the Authorization header, never into a log line or an exception text.

Sources (read 2026): Graph API "Handling Errors"
(developers.facebook.com/docs/graph-api/guides/error-handling: the error object, codes 1, 2, 3,
4, 10, 17, 102, 190, 200-299, 341, 368, 506); WhatsApp Cloud API "Error codes"
(developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes: "build
your app's error handling logic around code values", `error_subcode` deprecated since v16.0;
"Throughput" .../whatsapp/throughput: 130429; "Pair rate limits" .../whatsapp/messaging-limits:
131056); Messenger Platform "Common Error Codes" and Send API error codes
(developers.facebook.com/docs/messenger-platform/error-codes: 1200, 551, 100/2018001,
10/2018278, 4, 613).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
)

_MAX_ERROR_TEXT = 300


class ErrorClass(enum.StrEnum):
    THROTTLED = "throttled"  # too fast: wait for the pace, try again, never a spent attempt
    TRANSIENT = "transient"  # failed this once: backoff, counted against router.max_attempts
    REJECTED = "rejected"  # this message, for good: FAILED + DLQ at once
    ACCOUNT = "account"  # the sending account: pause the channel until the provider accepts


@dataclass(frozen=True)
class Verdict:
    error_class: ErrorClass
    pair: bool = False  # throttled per (account, recipient): only that recipient waits


THROTTLED = Verdict(ErrorClass.THROTTLED)
PAIR_THROTTLED = Verdict(ErrorClass.THROTTLED, pair=True)
TRANSIENT = Verdict(ErrorClass.TRANSIENT)
REJECTED = Verdict(ErrorClass.REJECTED)
ACCOUNT = Verdict(ErrorClass.ACCOUNT)

# code, or (code, subcode) where the subcode changes the meaning -> what to do.
CodeTable = Mapping[int | tuple[int, int], Verdict]

# What every Meta Graph API answers alike (the Graph API error-handling guide), the base of each
# channel's table. 368 ("temporarily blocked for policies violations") pauses rather than
# retries: it lasts hours to days and fails every message the same way.
GRAPH_API_CODES: CodeTable = {
    0: ACCOUNT,  # AuthException: the token cannot be used
    1: TRANSIENT,  # API Unknown: possibly a server error
    2: TRANSIENT,  # API Service: temporary downtime or overload
    3: ACCOUNT,  # API Method: the app lacks a capability or permission
    4: THROTTLED,  # API Too Many Calls: the app's rate limit
    10: ACCOUNT,  # API Permission Denied
    17: THROTTLED,  # API User Too Many Calls
    32: THROTTLED,  # Page-level call limit
    100: REJECTED,  # Invalid parameter (this request)
    102: ACCOUNT,  # API Session: the login or token expired
    190: ACCOUNT,  # Access token expired or invalid
    **dict.fromkeys(range(200, 300), ACCOUNT),  # API Permission (one code per permission)
    341: THROTTLED,  # Application limit reached
    368: ACCOUNT,  # Temporarily blocked for policy violations
    506: REJECTED,  # Duplicate post
    613: THROTTLED,  # Calls to this API exceeded the rate limit
}

WHATSAPP_CODES: CodeTable = {
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

INSTAGRAM_CODES: CodeTable = {
    **GRAPH_API_CODES,
    1200: TRANSIENT,  # Temporary send message failure
    551: REJECTED,  # This person isn't available right now
    (100, 2018001): REJECTED,  # No matching user found
    (10, 2018278): REJECTED,  # Sent outside the allowed (24 h) window: this message, not the token
}

CODES: Mapping[str, CodeTable] = {"whatsapp": WHATSAPP_CODES, "instagram": INSTAGRAM_CODES}


def classify(status: int, code: int | None, subcode: int | None, table: CodeTable) -> Verdict:
    """The verdict for an error answer: the (code, subcode) entry, else the code's, else the
    HTTP status fallback."""
    if code is not None:
        if subcode is not None and (verdict := table.get((code, subcode))) is not None:
            return verdict
        if (verdict := table.get(code)) is not None:
            return verdict
    if status == 429:
        return THROTTLED
    if status >= 500:
        return TRANSIENT
    if status in (401, 403):
        return ACCOUNT
    return REJECTED


def error_for_answer(
    status: int, body: bytes, retry_after: str | None, codes: CodeTable
) -> ThrottledError | TransientProviderError | ProviderRejectedError | AccountError:
    """The classified error for an error answer, its text `HTTP 400 (131026): message`;
    `retry_after` is the answer's Retry-After header, if any."""
    error = _error_object(body)
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    trace = error.get("fbtrace_id")
    fbtrace_id = str(trace)[:64] if trace else None
    verdict = classify(status, code, subcode, codes)
    text = f"HTTP {status}"
    if code is not None:
        text += f" ({code}/{subcode})" if subcode is not None else f" ({code})"
    text += f": {_error_text(error, body)}"
    if fbtrace_id:
        text += f" [fbtrace_id {fbtrace_id}]"
    if verdict.error_class is ErrorClass.THROTTLED:
        return ThrottledError(
            text,
            provider_code=code,
            fbtrace_id=fbtrace_id,
            retry_after_s=_retry_after_s(retry_after),
            pair=verdict.pair,
        )
    if verdict.error_class is ErrorClass.TRANSIENT:
        return TransientProviderError(
            text,
            provider_code=code,
            fbtrace_id=fbtrace_id,
            retry_after_s=_retry_after_s(retry_after),
        )
    if verdict.error_class is ErrorClass.ACCOUNT:
        return AccountError(text, provider_code=code, fbtrace_id=fbtrace_id)
    return ProviderRejectedError(text, provider_code=code, fbtrace_id=fbtrace_id)


def _error_object(raw: bytes) -> dict[str, Any]:
    """Meta's `{"error": {...}}`, or {} for a body that is not one (a proxy's HTML page)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, dict) else {}


def _int(value: Any) -> int | None:
    """A code as Meta sends it (a number; some gateways send a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _error_text(error: Mapping[str, Any], raw: bytes) -> str:
    """The provider's own words, short: the message and, where WhatsApp gives them, the details;
    never our request (it held the token)."""
    if error:
        text = str(error.get("message") or "no message")
        data = error.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        if details and str(details) not in text:
            text = f"{text}: {details}"
    else:
        text = raw.decode("utf-8", errors="replace").strip() or "no body"
    return text[:_MAX_ERROR_TEXT]


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the computed backoff applies
