"""Meta's error answers, classified: one code table per channel, each row from Meta's page.

Meta asks clients to handle errors by the Graph API error object's `code`, not by the HTTP
status ("build your app's error handling logic around `code` values and `details`" [E]):
throttling commonly comes back as HTTP 400 with code 130429. So an error answer's object
(`error.code`, `error.error_subcode`, `error.message`, `error.error_data.details`,
`error.fbtrace_id`) is looked up in the channel's ONE table (`CodeTable`: code, or (code,
subcode) where the subcode changes the meaning -> `Verdict`), built on the Graph API codes every
Meta API shares (`GRAPH_API_CODES`). What each class means for a send:

- throttled: too fast, the message was NOT taken; wait for the pace, never a spent attempt.
  `scope` says whose pace: the sending number or account (130429), one (number, user) pair
  (131056), or every number of the app or business account (4, 80007: "pace the app, not one
  number");
- transient: failed this once, not taken (a maintenance window); backoff, counted;
- in_doubt: an answer that does not prove the message was not taken (an unknown or service error:
  1, 2, 131000, 131016; a gateway's 502/503/504 without Meta's error object): the router waits
  for the provider's word before it sends again (delivery/doubt.py);
- rejected: this message, for good: FAILED + DLQ; `window_closed` and `template_rejected` are
  rejections with their own reason;
- account: the sending account itself (token, permissions, policy, registration, payment):
  every message would fail alike, so its lane pauses.

An answer without a known code falls back to its HTTP status: 429 throttled, 502/503/504 in
doubt, other 5xx in doubt too (Meta documents its own failures as 500 and 503 [E]), 401 and 403
account, any other 4xx rejected. Error texts carry no channel name (the router prefixes it once)
and never our request: access tokens go only into the Authorization header.

Pages (read 2026; [E] was read in a verbatim copy of the same page where the stored excerpt
stopped at its introduction; [s] marks a row whose code Meta's stored pages do not list, read
from a third party's copy or an observed answer, named in docs/meta-protocol.md):
[G] Graph API, Handling Errors: developers.facebook.com/docs/graph-api/guides/error-handling
[E] WhatsApp Cloud API, Error codes: developers.facebook.com/documentation/business-messaging/
    whatsapp/support/error-codes
[T] WhatsApp Throughput: .../business-messaging/whatsapp/throughput
[P] WhatsApp About the platform (pair rate limits): .../whatsapp/about-the-platform
[U] WhatsApp per-user marketing limits: .../whatsapp/templates/marketing-templates/per-user-limits
[X] WhatsApp experiments: .../business-messaging/whatsapp/support/experiments
[M] Messenger Platform (and Instagram Messaging), Error codes: .../business-messaging/
    messenger-platform/error-codes
[R] Messenger Platform rate limits (Instagram included): .../messenger-platform/overview/
    rate-limiting
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal

from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    TemplateRejectedError,
    ThrottledError,
    TransientProviderError,
    WindowClosedError,
)
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.events import json_object

_MAX_ERROR_TEXT = 300


class ErrorClass(enum.StrEnum):
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    IN_DOUBT = "in_doubt"
    REJECTED = "rejected"
    WINDOW = "window_closed"
    TEMPLATE = "template_rejected"
    ACCOUNT = "account"


Scope = Literal["account", "pair", "app"]


@frozen
class Verdict:
    error_class: ErrorClass
    # Throttled: whose pace to slow. "account": the sending number or account; "pair": one
    # (account, recipient) pair, only that recipient waits; "app": every account of the Meta
    # app or business account.
    scope: Scope = "account"


THROTTLED = Verdict(ErrorClass.THROTTLED)
PAIR_THROTTLED = Verdict(ErrorClass.THROTTLED, scope="pair")
APP_THROTTLED = Verdict(ErrorClass.THROTTLED, scope="app")
TRANSIENT = Verdict(ErrorClass.TRANSIENT)
IN_DOUBT = Verdict(ErrorClass.IN_DOUBT)
REJECTED = Verdict(ErrorClass.REJECTED)
WINDOW = Verdict(ErrorClass.WINDOW)
TEMPLATE = Verdict(ErrorClass.TEMPLATE)
ACCOUNT = Verdict(ErrorClass.ACCOUNT)

# code, or (code, subcode) where the subcode changes the meaning -> what to do.
CodeTable = Mapping[int | tuple[int, int], Verdict]

# What every Meta Graph API answers alike, the base of each channel's table.
GRAPH_API_CODES: CodeTable = {
    0: ACCOUNT,  # AuthException: the token cannot be used [E]
    1: IN_DOUBT,  # API Unknown: "possibly a server error" [G][E]
    2: IN_DOUBT,  # API Service: "temporary due to downtime or overload", HTTP 503 [G][E]
    3: ACCOUNT,  # API Method: a capability or permission the app lacks (HTTP 500) [G][E]
    4: APP_THROTTLED,  # API Too Many Calls: "the app has reached its API call rate limit" [G][E]
    10: ACCOUNT,  # API Permission Denied [G][E]
    17: THROTTLED,  # API User Too Many Calls [G]
    32: THROTTLED,  # Page-level call limit [G]
    100: REJECTED,  # Invalid parameter: this request [G][E]
    (100, 33): ACCOUNT,  # "Object with ID ... does not exist": a wrong phone number id [s]
    102: ACCOUNT,  # API Session: the login or token expired [G]
    190: ACCOUNT,  # Access token has expired [G][E]
    **dict.fromkeys(range(200, 300), ACCOUNT),  # API Permission, one code per permission [G][E]
    341: THROTTLED,  # Application limit reached [G]
    368: ACCOUNT,  # Temporarily blocked for policy violations (hours to days) [G][E]
    506: REJECTED,  # Duplicate post [G]
    613: THROTTLED,  # Calls to this API have exceeded the rate limit [s]
}

WHATSAPP_CODES: CodeTable = {
    **GRAPH_API_CODES,
    # throttled: not taken; whose pace [E]
    80007: APP_THROTTLED,  # the WhatsApp Business Account's rate limit: every number of it [E]
    130429: THROTTLED,  # Rate limit hit: the number's throughput (80 mps) [E][T]
    131048: THROTTLED,  # Spam rate limit hit: the number, for a while [E]
    131056: PAIR_THROTTLED,  # (Business, Consumer) pair rate limit: 1 per 6 s, burst 45 [E][P]
    # transient: not taken, failed this once
    131057: TRANSIENT,  # Account in maintenance mode (a throughput upgrade, up to 1 min) [E][T]
    133004: TRANSIENT,  # Server temporarily unavailable (HTTP 503) [E]
    2494100: TRANSIENT,  # Account in maintenance mode: try again in a few minutes [E]
    # in doubt: the answer proves nothing
    131000: IN_DOUBT,  # Something went wrong (HTTP 500): "try again" [E]
    131016: IN_DOUBT,  # Service unavailable (HTTP 500) [E]
    # rejected: this message
    130472: REJECTED,  # User's number is part of an experiment; also by webhook [E][X]
    130497: REJECTED,  # The business cannot message users in this country [E]
    131008: REJECTED,  # Required parameter is missing [E]
    131009: REJECTED,  # Parameter value is not valid [E]
    131021: REJECTED,  # Recipient cannot be the sender [E]
    131026: REJECTED,  # Message undeliverable (not on WhatsApp, old app, terms) [E]
    131030: REJECTED,  # Recipient phone number not in allowed list (a test number) [s]
    131047: WINDOW,  # Re-engagement message: over 24 h since the user last wrote [E]
    131049: REJECTED,  # Not delivered to maintain healthy ecosystem engagement; by webhook [E][U]
    131050: REJECTED,  # The user stopped marketing messages [E]
    131051: REJECTED,  # Unsupported message type [E]
    131052: REJECTED,  # Media download error (a user's media) [E]
    131053: REJECTED,  # Media upload error: the media could not be used; by webhook [E]
    135000: REJECTED,  # Generic user error in the request's parameters [E]
    # templates [E]
    132000: TEMPLATE,  # Template param count mismatch
    132001: TEMPLATE,  # Template does not exist in that language, or is not approved (HTTP 404)
    132005: TEMPLATE,  # Template hydrated text too long
    132007: TEMPLATE,  # Template format character policy violated
    132012: TEMPLATE,  # Template parameter format mismatch
    132015: TEMPLATE,  # Template is paused (low quality)
    132016: TEMPLATE,  # Template is disabled (paused too often)
    132068: TEMPLATE,  # Flow is blocked
    132069: TEMPLATE,  # Flow is throttled (10 messages an hour with this flow)
    # account: every message fails alike until an operator acts [E]
    33: ACCOUNT,  # Parameter value is not valid: "the business phone number has been deleted"
    131005: ACCOUNT,  # Access denied
    131031: ACCOUNT,  # Account has been locked (policy, or a wrong two-step PIN)
    131037: ACCOUNT,  # The number needs an approved display name
    131042: ACCOUNT,  # Business eligibility payment issue
    131045: ACCOUNT,  # Incorrect certificate: the number's registration
    133000: ACCOUNT,  # Incomplete deregistration
    133005: ACCOUNT,  # Two-step verification PIN mismatch
    133006: ACCOUNT,  # Phone number re-verification needed
    133008: ACCOUNT,  # Too many two-step verification PIN guesses
    133009: ACCOUNT,  # Two-step verification PIN guessed too fast
    133010: ACCOUNT,  # Phone number not registered
    133015: ACCOUNT,  # The number was deleted recently: wait before registering
    133016: ACCOUNT,  # Register/deregister attempts over the limit
    134011: ACCOUNT,  # WhatsApp Payments terms of service not accepted
}

INSTAGRAM_CODES: CodeTable = {
    **GRAPH_API_CODES,
    4: APP_THROTTLED,  # "Application request limit reached" [M]
    (
        1,
        1357046,
    ): IN_DOUBT,  # "the messages are all sent successfully, but ... returns an error" [M]
    551: REJECTED,  # This person isn't available right now (blocked us, deactivated) [s]
    1200: IN_DOUBT,  # Temporary send message failure [s]
    (100, 2018001): REJECTED,  # No matching user found [s]
    (10, 2534022): WINDOW,  # "This message is sent outside of allowed window" (Instagram) [s]
    (10, 2018278): WINDOW,  # Message sent outside of allowed window (Messenger's subcode) [s]
    (9, 2018352): REJECTED,  # "User is performing too many actions" (marketing) [s]
}

CODES: Mapping[str, CodeTable] = {"whatsapp": WHATSAPP_CODES, "instagram": INSTAGRAM_CODES}

# A gateway's answer (an HTML body, no Graph error object): the request reached something, and
# Meta may well have taken the message behind it.
_GATEWAY_STATUSES = frozenset({502, 503, 504})


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
    if status in _GATEWAY_STATUSES or status >= 500:
        return IN_DOUBT
    if status in (401, 403):
        return ACCOUNT
    return REJECTED


@frozen
class ErrorAnswer:
    """An error answer as Meta gives it: its code, subcode, words and trace id."""

    code: int | None
    subcode: int | None
    text: str  # `HTTP 400 (131026): message: details [fbtrace_id ...]`
    fbtrace_id: str | None


def read_answer(status: int, body: bytes) -> ErrorAnswer:
    """The error object of an answer (or what a body that is not one says)."""
    error = _error_object(body)
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    trace = error.get("fbtrace_id")
    fbtrace_id = str(trace)[:64] if trace else None
    text = f"HTTP {status}"
    if code is not None:
        text += f" ({code}/{subcode})" if subcode is not None else f" ({code})"
    text += f": {_error_text(error, body)}"
    if fbtrace_id:
        text += f" [fbtrace_id {fbtrace_id}]"
    return ErrorAnswer(code, subcode, text, fbtrace_id)


ProviderFailure = ThrottledError | TransientProviderError | ProviderRejectedError | AccountError


def error_for_answer(
    status: int, body: bytes, retry_after: str | None, codes: CodeTable
) -> ProviderFailure:
    """The classified error for an error answer; `retry_after` is its Retry-After header."""
    answer = read_answer(status, body)
    verdict = classify(status, answer.code, answer.subcode, codes)
    return error_for_verdict(
        verdict, answer.text, code=answer.code, fbtrace_id=answer.fbtrace_id,
        retry_after_s=_retry_after_s(retry_after),
    )  # fmt: skip


def error_for_verdict(
    verdict: Verdict,
    text: str,
    *,
    code: int | None,
    fbtrace_id: str | None = None,
    retry_after_s: float | None = None,
) -> ProviderFailure:
    """The exception of errors.py a verdict stands for (an answer's, or a failed status
    webhook's: the same code ends the same way whichever way it came)."""
    cls = verdict.error_class
    if cls is ErrorClass.THROTTLED:
        return ThrottledError(
            text,
            provider_code=code,
            fbtrace_id=fbtrace_id,
            retry_after_s=retry_after_s,
            pair=verdict.scope == "pair",
            app=verdict.scope == "app",
        )
    if cls in (ErrorClass.TRANSIENT, ErrorClass.IN_DOUBT):
        return TransientProviderError(
            text,
            provider_code=code,
            fbtrace_id=fbtrace_id,
            retry_after_s=retry_after_s,
            in_doubt=cls is ErrorClass.IN_DOUBT,
        )
    if cls is ErrorClass.ACCOUNT:
        return AccountError(text, provider_code=code, fbtrace_id=fbtrace_id)
    rejected = {ErrorClass.WINDOW: WindowClosedError, ErrorClass.TEMPLATE: TemplateRejectedError}
    return rejected.get(cls, ProviderRejectedError)(text, provider_code=code, fbtrace_id=fbtrace_id)


def _error_object(raw: bytes) -> dict[str, Any]:
    """Meta's `{"error": {...}}`, or {} for a body that is not one (a proxy's HTML page)."""
    error = (json_object(raw) or {}).get("error")
    return error if isinstance(error, dict) else {}


def _int(value: Any) -> int | None:
    """A code as Meta sends it (a number; some gateways send a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = value.strip() if isinstance(value, str) else ""
    # ASCII digits only, and few of them: str.isdigit also takes "²", and int() refuses a
    # number of more than 4,300 digits (a code is never near that).
    if text.isascii() and text.isdigit() and len(text) <= 19:
        return int(text)
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
    return " ".join(text.split())[:_MAX_ERROR_TEXT]


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the computed backoff applies
