"""The one small interface every channel provider sits behind, and how its answers are classified.

A `ChannelAdapter` has one verb, `send`, plus `aclose`, and says what it is: its `name`, the
sending `account` (the business phone number id, the Instagram account id: what the provider's
limits are counted against) and `check_content` (the channel's content limits, checked before
any call). Adapters speak to the real provider APIs through the process's shared HTTP client
(channels/http.py); the development mocks speak the same HTTP, so the adapter that tests
exercise is the one production runs.

Classification. Meta asks clients to handle errors by the Graph API error object's `code`, not
by the HTTP status: throttling commonly comes back as HTTP 400 with code 130429 in the body. So
`post_json` parses the error object (`error.code`, `error.error_subcode`, `error.message`,
`error.error_data.details`, `error.fbtrace_id`) and looks the code up in the channel's ONE table
(`CodeTable`: code, or (code, subcode) for a subcode that changes the meaning, -> `Verdict`),
built on the Graph API codes every Meta API shares (`GRAPH_API_CODES`, below). An answer
without a known code falls back to its HTTP status: 429 throttled, 5xx transient, 401 and 403
account, any other 4xx rejected. No answer at all (refused, reset, timeout) is transient, and
says whether the request may have reached the provider (`in_doubt`). Four classes, each an
exception of errors.py: ThrottledError (wait for the pace, never a spent attempt),
TransientProviderError (backoff, counted), ProviderRejectedError (this message, for good),
AccountError (the sending account: pause the channel).

Error texts carry no channel name (the router prefixes it once) and never our request: access
tokens go only into the Authorization header, never into a log line or an exception text.

Sources (read 2026): Graph API "Handling Errors"
(developers.facebook.com/docs/graph-api/guides/error-handling: the error object, codes 1, 2, 3,
4, 10, 17, 102, 190, 200-299, 341, 368, 506); WhatsApp Cloud API "Error codes"
(developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes: "build
your app's error handling logic around code values", `error_subcode` deprecated since v16.0);
Messenger Platform "Common Error Codes" and Send API error codes
(developers.facebook.com/docs/messenger-platform/error-codes).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from chat4all_workers.channels.http import (
    HttpClient,
    HTTPTransportError,
    RequestTimeoutError,
    Response,
)
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


@dataclass(frozen=True)
class OutboundMessage:
    """What a channel is asked to deliver."""

    message_id: str
    conversation_id: int
    recipient: str
    kind: Literal["text", "file"]
    text: str = ""
    document_url: str = ""
    filename: str = ""
    mime_type: str = ""

    def callback_data(self) -> str:
        """Opaque data the provider echoes in its status webhooks (and the mocks in theirs)."""
        return orjson.dumps(
            {"message_id": self.message_id, "conversation_id": self.conversation_id}
        ).decode()


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str


class ChannelAdapter(Protocol):
    name: str
    account: str  # the sending account: what the provider's limits count against

    def check_content(self, message: OutboundMessage) -> None:
        """Raise ContentLimitError, naming the limit, for a message the channel cannot take."""
        ...

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


async def post_json(
    http: HttpClient,
    url: str,
    *,
    token: str,
    body: dict[str, Any],
    timeout_s: float,
    codes: CodeTable,
) -> dict[str, Any]:
    """POST a JSON body with a bearer token; the decoded JSON answer or a classified error."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        response = await http.post(
            url, body=orjson.dumps(body), headers=headers, timeout_s=timeout_s
        )
    except RequestTimeoutError as exc:
        raise TransientProviderError(
            f"no answer within {timeout_s}s", in_doubt=exc.request_written
        ) from None
    except HTTPTransportError as exc:  # refused, reset, TLS, closed early
        raise TransientProviderError(
            f"{type(exc).__name__}: {exc}", in_doubt=exc.request_written
        ) from None
    if response.status >= 400:
        raise provider_error(response, codes)
    try:
        doc = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        raise TransientProviderError(
            f"HTTP {response.status} with a body that is not JSON", in_doubt=True
        ) from None
    if not isinstance(doc, dict):
        raise TransientProviderError(
            f"HTTP {response.status} with an unexpected body", in_doubt=True
        )
    return doc


def provider_error(
    response: Response, codes: CodeTable
) -> ThrottledError | TransientProviderError | ProviderRejectedError | AccountError:
    """The classified error for an error answer, its text `HTTP 400 (131026): message`."""
    error = _error_object(response.body)
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    trace = error.get("fbtrace_id")
    fbtrace_id = str(trace)[:64] if trace else None
    verdict = classify(response.status, code, subcode, codes)
    text = f"HTTP {response.status}"
    if code is not None:
        text += f" ({code}/{subcode})" if subcode is not None else f" ({code})"
    text += f": {_error_text(error, response.body)}"
    if fbtrace_id:
        text += f" [fbtrace_id {fbtrace_id}]"
    if verdict.error_class is ErrorClass.THROTTLED:
        retry_after = _retry_after_s(response.headers.get("retry-after"))
        return ThrottledError(
            text,
            provider_code=code,
            fbtrace_id=fbtrace_id,
            retry_after_s=retry_after,
            pair=verdict.pair,
        )
    if verdict.error_class is ErrorClass.TRANSIENT:
        retry_after = _retry_after_s(response.headers.get("retry-after"))
        return TransientProviderError(
            text, provider_code=code, fbtrace_id=fbtrace_id, retry_after_s=retry_after
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
