"""The one small interface every channel provider sits behind, and its HTTP error rules.

A `ChannelAdapter` has one verb, `send`, plus `aclose`. Adapters speak to the real provider APIs
through the process's shared HTTP client (channels/http.py); the development mocks speak the same
HTTP, so the adapter that tests exercise is the one production runs.

Errors are classified once, here: 429, 5xx, timeouts and connection failures are retryable
(with the server's Retry-After when it gives one); any other 4xx (an invalid recipient, a bad
token) is permanent. Access tokens go only into the Authorization header: never into a log line
or an exception text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from chat4all_workers.channels.http import HttpClient, HTTPTransportError
from chat4all_workers.errors import ProviderRejectedError, RetryableError

_MAX_ERROR_TEXT = 300


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

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


async def post_json(
    http: HttpClient,
    url: str,
    *,
    token: str,
    body: dict[str, Any],
    timeout_s: float,
    channel: str,
) -> dict[str, Any]:
    """POST a JSON body with a bearer token; the decoded JSON answer or a classified error."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        response = await http.post(
            url, body=orjson.dumps(body), headers=headers, timeout_s=timeout_s
        )
    except TimeoutError:
        raise RetryableError(f"{channel}: no answer within {timeout_s}s") from None
    except (HTTPTransportError, OSError) as exc:  # refused, reset, TLS, closed early
        raise RetryableError(f"{channel}: {type(exc).__name__}: {exc}") from None
    raw, status = response.body, response.status
    retry_after = _retry_after_s(response.headers.get("retry-after"))
    if status == 429 or status >= 500:
        raise RetryableError(
            f"{channel}: HTTP {status}: {_error_text(raw)}", retry_after_s=retry_after
        )
    if status >= 400:
        raise ProviderRejectedError(f"{channel}: HTTP {status}: {_error_text(raw)}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RetryableError(f"{channel}: HTTP {status} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise RetryableError(f"{channel}: HTTP {status} with an unexpected body")
    return doc


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the computed backoff applies


def _error_text(raw: bytes) -> str:
    """The provider's own error message, short; never our request (it held the token)."""
    try:
        doc = orjson.loads(raw)
        error = doc.get("error", doc) if isinstance(doc, dict) else doc
        message = error.get("message", error) if isinstance(error, dict) else error
        text = str(message)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", errors="replace")
    return text[:_MAX_ERROR_TEXT]
