"""The one small interface every channel provider sits behind, and the POST they all make.

A `ChannelAdapter` has one verb, `send`, plus `aclose`, and says what it is: its `name` and the
sending `account` (the business phone number id, the Instagram account id: what the provider's
limits are counted against). What a message may hold is Meta's protocol (meta/limits.py),
checked before any call by delivery/outbound.py. Adapters speak to the real provider APIs
through the process's shared HTTP client (channels/http.py); the development mocks speak the
same HTTP, so the adapter that tests exercise is the one production runs.

`MetaAdapter` is the adapter of both channels, which are Meta's send APIs of one shape (`POST
{base_url}/{version}/{account}/messages` with the account's bearer token); each channel's module
says what is its own: its name, its code table, the body it writes and where the answer holds the
message id. `post_json` makes the call and turns what came back into the provider's answer or a
classified error (meta/errors.py: the channel's ONE code table). No answer at all (refused,
reset, timeout) is transient, and says whether the request may have reached the provider
(`in_doubt`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import orjson

from chat4all_workers.channels.http import HttpClient, HTTPTransportError, RequestTimeoutError
from chat4all_workers.config import InstagramSettings, WhatsAppSettings
from chat4all_workers.config_values import Secret
from chat4all_workers.errors import TransientProviderError
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.errors import CodeTable, error_for_answer
from chat4all_workers.meta.payloads import OutboundMessage


@frozen
class SendResult:
    provider_message_id: str


class ChannelAdapter(Protocol):
    name: str
    account: str  # the sending account: what the provider's limits count against

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


class MetaAdapter(ABC):
    name: str
    codes: ClassVar[CodeTable]

    def __init__(
        self,
        settings: WhatsAppSettings | InstagramSettings,
        http: HttpClient,
        *,
        provider_id: str | None = None,
        token: Secret | None = None,
    ) -> None:
        """`provider_id` and `token`: the sending account's (accounts/); by default the
        environment's single account, from `settings`."""
        self._timeout_s = settings.timeout_s
        self._http = http
        self.account = settings.provider_id if provider_id is None else provider_id
        self._token = settings.access_token if token is None else token
        base = settings.base_url.rstrip("/")
        self._url = f"{base}/{settings.api_version}/{self.account}/messages"

    async def send(self, message: OutboundMessage) -> SendResult:
        answer = await post_json(
            self._http,
            self._url,
            token=self._token.get(),
            body=self.body(message),
            timeout_s=self._timeout_s,
            codes=self.codes,
        )
        return SendResult(self.message_id(answer))

    @staticmethod
    @abstractmethod
    def body(message: OutboundMessage) -> dict[str, Any]:
        """The request body of `message`, in the channel's format (meta/payloads.py)."""

    @abstractmethod
    def message_id(self, answer: dict[str, Any]) -> str:
        """The provider's id of the message in a success answer; TransientProviderError (in
        doubt) when it holds none."""

    async def aclose(self) -> None:  # noqa: B027 - a default, not a hook to fill in
        """Nothing of its own to close: the HTTP client belongs to the process."""


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
        raise error_for_answer(
            response.status, response.body, response.headers.get("retry-after"), codes
        )
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
