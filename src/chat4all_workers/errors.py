"""One exception tree for the whole runtime.

Every failure a worker meets falls in exactly one of three families, and the family decides what
happens to the work item, not the place where the error was raised::

    Chat4AllError
    +-- ConfigError            bad settings: the process refuses to start (exit code 2)
    +-- DependencyRefusedError a backing service refused us for good at start-up (wrong
    |                          password, no such database): exit code 1 at once, no retries
    +-- PortUnavailableError   a port the process is to serve cannot be bound (another process
    |                          holds it): exit code 1 at once, naming its setting
    +-- UnsealError            a stored token or app secret does not open (wrong key,
    |                          altered, copied from another row): that row is left out
    +-- RetryableError         transient: retry in place with backoff, the item stays owned
    |   +-- CircuitOpenError   the Kafka breaker is open: do not even try, wait or fall back
    |   +-- TransientProviderError*  a channel API failed this once (a 5xx without Meta's error
    |   |                      object, a timeout, codes 1, 2, 131000): `in_doubt` when the
    |   |                      answer does not prove the message was not taken
    |   +-- ThrottledError*    a channel API said "too fast": wait for the pace, never a spent
    |   |                      attempt (bounded by router.throttle_deadline_s instead)
    |   +-- AccountError*      a channel API refused the sending account (token, permission,
    |                          policy): every message fails alike, so the channel pauses
    +-- PermanentError         can never succeed: dead-letter the item with the reason
    |   +-- InvalidRecordError the input violates the wire format (bad JSON, schema, channel)
    |   +-- ContentLimitError  over the channel's limits (text, media type or size); no call
    |   +-- UnsupportedMessageError  a kind of message the channel has not (a template on
    |   |                      Instagram); no call
    |   +-- ProviderRejectedError*  a channel API refused this message for good (131026, ...)
    |   |   +-- WindowClosedError*     outside the user's conversation window (131047, 10/2534022)
    |   |   +-- TemplateRejectedError* the template (132xxx)
    |   +-- ThrottleDeadlineError   still throttled after router.throttle_deadline_s
    |   +-- UnknownAccountError     the message names no account the deployment has; no call
    |   +-- AccountDisabledError    it names a disabled account; no call
    +-- RoleFailedError        a supervised role crashed past its restart intensity

    * also a ProviderError: what the provider answered (`error_class`, `provider_code`,
      `fbtrace_id`), classified by the channel's code table (meta/errors.py); the transient and
      throttled ones through RetryAfterError (`retry_after_s`).

Anything else is a bug: it crashes the child task and the supervisor restarts it. The exception
is a backing service that is unreachable (`resources.TRANSIENT_ERRORS`, the client libraries'
own errors): the roles treat it as retryable and wait the outage out.
"""

from __future__ import annotations

from typing import ClassVar, TypedDict, Unpack


class Chat4AllError(Exception):
    """Root of every error the runtime raises on purpose."""


class ConfigError(Chat4AllError):
    """A setting is missing or malformed; `key` and `source` say which and where from."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"{key} ({source}): {problem}")


class DependencyRefusedError(Chat4AllError):
    """A backing service answered, and said no in a way no retry changes (credentials,
    permissions, a database that does not exist); `service` and `reason` say who and why."""

    def __init__(self, service: str, reason: str) -> None:
        self.service = service
        self.reason = reason
        super().__init__(f"{service}: {reason}")


class PortUnavailableError(Chat4AllError):
    """A port the process is to serve cannot be bound at start-up (another process holds it, a
    privileged port, an address this host does not have); `server` says whose (a role, or
    "operations") and `reason` where, which setting and why (listening.py)."""

    def __init__(self, server: str, reason: str) -> None:
        self.server = server
        self.reason = reason
        super().__init__(f"{server}: {reason}")


class UnsealError(Chat4AllError):
    """A sealed value (an account's token, an app's secret: accounts/sealing.py) does not open:
    sealed with a key the process does not hold, altered, or copied from another row. `ref`
    names the row (`whatsapp/acme`, `app/123`), never the value."""

    def __init__(self, ref: str, problem: str) -> None:
        self.ref = ref
        self.problem = problem
        super().__init__(f"{ref}: {problem}")


class RetryableError(Chat4AllError):
    """Transient failure; `retry_after_s` carries a server's hint (e.g. Retry-After)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitOpenError(RetryableError):
    """The circuit breaker refuses calls until its cool-down has passed."""


class PermanentError(Chat4AllError):
    """The item can never succeed; `error_type` is a stable, low-cardinality label."""

    error_type = "permanent"


class InvalidRecordError(PermanentError):
    """The record does not match the wire format in SPEC section 3."""

    error_type = "invalid_record"


class ProviderSaid(TypedDict, total=False):
    """The details of a provider's answer every ProviderError takes (keywords of its own)."""

    provider_code: int | None
    fbtrace_id: str | None


class RetrySaid(ProviderSaid, total=False):
    """And how long to wait, for the answers to try again after (RetryAfterError)."""

    retry_after_s: float | None


class ProviderError(Chat4AllError):
    """What a channel provider answered, attached to the error it was classified as.

    `error_class` is one of throttled | transient | rejected | account (the classes of the
    channels' code tables); `provider_code` is Meta's `error.code` when the answer had one,
    `fbtrace_id` the id Meta's support asks for. A mixin, so that each class keeps its place
    in the tree above (retry in place or dead-letter) and still says what the provider said.
    """

    error_class: ClassVar[str]

    def __init__(
        self, message: str, *, provider_code: int | None = None, fbtrace_id: str | None = None
    ) -> None:
        super().__init__(message)  # the family's (RetryableError, PermanentError), next in line
        self.provider_code = provider_code
        self.fbtrace_id = fbtrace_id


class RetryAfterError(ProviderError, RetryableError):
    """An answer to try again after: `retry_after_s` when the provider said how long (its
    Retry-After header). The base of the transient and the throttled answers."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, **said: Unpack[ProviderSaid]
    ) -> None:
        super().__init__(message, **said)
        self.retry_after_s = retry_after_s


class TransientProviderError(RetryAfterError):
    """The provider failed this call (5xx, codes 1/2/131000, a timeout, a reset): try again,
    counted against `router.max_attempts`.

    `in_doubt` is true when the request was written before it failed (a timeout, a reset after
    sending): the provider may have acted on it. The router then waits for the provider's word
    (its status webhooks, recorded in the dedup marker) before it sends again.
    """

    error_class = "transient"

    def __init__(self, message: str, *, in_doubt: bool = False, **said: Unpack[RetrySaid]) -> None:
        super().__init__(message, **said)
        self.in_doubt = in_doubt


class ThrottledError(RetryAfterError):
    """The provider refused the call as too fast (130429, 131056, 4, 613, HTTP 429, ...): it did
    not take the message. Wait for the pace and try again; never a spent attempt.

    `pair` says the limit was the one per (sending account, recipient), so only that recipient
    has to wait (WhatsApp's 131056); `app` that it was the Meta app's or business account's, so
    every account of it slows down (4, 80007).
    """

    error_class = "throttled"

    def __init__(
        self, message: str, *, pair: bool = False, app: bool = False, **said: Unpack[RetrySaid]
    ) -> None:
        super().__init__(message, **said)
        self.pair = pair
        self.app = app


class AccountError(ProviderError, RetryableError):
    """The provider refused the sending account itself (190 expired token, 10 and 200-299
    permissions, 368 policy block, 131031 locked, ...): every message would fail the same way
    until an operator acts. The router pauses the channel and holds its messages; retryable,
    because nothing is wrong with the message."""

    error_class = "account"


class ProviderRejectedError(ProviderError, PermanentError):
    """A channel provider refused this message for good (an invalid recipient, outside the
    customer-service window, ...); the next message may well go through."""

    error_type = "provider_rejected"
    error_class = "rejected"


class WindowClosedError(ProviderRejectedError):
    """Outside the conversation's window: WhatsApp's 24-hour customer service window (131047),
    Instagram's standard messaging window (10/2534022). This message, to this user, until the user
    writes again; the router remembers the window closed (delivery/windows.py)."""

    error_type = "window_closed"


class TemplateRejectedError(ProviderRejectedError):
    """A template message the provider refused for its template (132xxx: missing, not approved
    in that language, paused, disabled, parameters that do not match)."""

    error_type = "template_rejected"


class UnsupportedMessageError(PermanentError):
    """The channel has no such kind of message (a template on Instagram): refused before any
    call."""

    error_type = "unsupported_message"


class ContentLimitError(PermanentError):
    """The text is over the channel's limit (WhatsApp 4,096 characters, Instagram 1,000 bytes):
    refused before any call, the reason names the limit."""

    error_type = "content_limit"


class ThrottleDeadlineError(PermanentError):
    """The provider still throttled the send after `router.throttle_deadline_s`."""

    error_type = "throttle_deadline"


class UnknownAccountError(PermanentError):
    """The message names a sending account (or its channel has no default) that the
    deployment does not have: nothing is sent."""

    error_type = "unknown_account"


class AccountDisabledError(PermanentError):
    """The message names an account an operator disabled: nothing is sent."""

    error_type = "account_disabled"


class RoleFailedError(Chat4AllError):
    """A role exceeded its restart intensity; the supervisor escalates with this."""

    def __init__(self, role: str, last_error: BaseException | None) -> None:
        self.role = role
        self.last_error = last_error
        detail = f"{type(last_error).__name__}: {last_error}" if last_error else "no error"
        super().__init__(f"role {role!r} failed past its restart intensity; last error: {detail}")
