"""One exception tree for the whole runtime.

Every failure a worker meets falls in exactly one of three families, and the family decides what
happens to the work item, not the place where the error was raised::

    Chat4AllError
    +-- ConfigError            bad settings: the process refuses to start (exit code 2)
    +-- DependencyRefusedError a backing service refused us for good at start-up (wrong
    |                          password, no such database): exit code 1 at once, no retries
    +-- RetryableError         transient: retry in place with backoff, the item stays owned
    |   +-- CircuitOpenError   the Kafka breaker is open: do not even try, wait or fall back
    +-- PermanentError         can never succeed: dead-letter the item with the reason
    |   +-- InvalidRecordError the input violates the wire format (bad JSON, schema, channel)
    |   +-- ProviderRejectedError  a channel API refused the message for good (4xx)
    +-- RoleFailedError        a supervised role crashed past its restart intensity

Anything else is a bug: it crashes the child task and the supervisor restarts it. The exception
is a backing service that is unreachable (`resources.TRANSIENT_ERRORS`, the client libraries'
own errors): the roles treat it as retryable and wait the outage out.
"""

from __future__ import annotations


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


class ProviderRejectedError(PermanentError):
    """A channel provider rejected the message (a 4xx other than 429)."""

    error_type = "provider_rejected"


class RoleFailedError(Chat4AllError):
    """A role exceeded its restart intensity; the supervisor escalates with this."""

    def __init__(self, role: str, last_error: BaseException | None) -> None:
        self.role = role
        self.last_error = last_error
        detail = f"{type(last_error).__name__}: {last_error}" if last_error else "no error"
        super().__init__(f"role {role!r} failed past its restart intensity; last error: {detail}")
