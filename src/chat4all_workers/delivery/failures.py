"""Why a channel of a message failed, what its FAILED status says, and what its DLQ record says.

A channel that fails (FAILED for that channel) is a `ChannelFailure`: the error and the attempts
spent. Once every channel of the record is done, the record itself is dead-lettered once, its
reason naming each failed channel (`dead_letter_reason`).
"""

from __future__ import annotations

from typing import Any

from chat4all_workers.errors import PermanentError, ProviderError, RetryableError
from chat4all_workers.frozen import frozen


class UnknownOutcomeError(PermanentError):
    """A send in doubt the provider stayed silent about, in `router.on_unknown_outcome =
    "dead_letter"` mode: it may or may not have the message."""

    error_type = "delivery_unknown"


class RetriesExhaustedError(PermanentError):
    """No attempt left: a copy published again after failures the provider reported later had
    spent them all."""

    error_type = "retries_exhausted"


class LeaseLostError(PermanentError):
    """Another worker took the send's lease between two attempts (its own, expired: this one
    was too slow); that worker sends it, this record reports FAILED for the channel."""

    error_type = "lease_lost"


class GivenUpError(PermanentError):
    """This record gave up on the channel before (its `failed:` marker): FAILED again, the same
    error type, nothing sent."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type or PermanentError.error_type


@frozen
class ChannelFailure:
    channel: str
    error: PermanentError | RetryableError
    attempts: int

    @property
    def provider(self) -> ProviderError | None:
        """The provider's answer behind the failure (a throttle deadline's last throttle)."""
        for error in (self.error, self.error.__cause__):
            if isinstance(error, ProviderError):
                return error
        return None

    def details(self) -> dict[str, Any]:
        """FAILED status details: reason, attempts, provider_code, error_class (absent omitted)."""
        details: dict[str, Any] = {"reason": str(self.error)}
        if self.attempts:
            details["attempts"] = self.attempts
        if (provider := self.provider) is not None:
            if provider.provider_code is not None:
                details["provider_code"] = provider.provider_code
            details["error_class"] = provider.error_class
        return details


@frozen
class DeadLetter:
    """What the record's DLQ copy says about its failed channels."""

    reason: str
    error_type: str
    attempts: int
    headers: list[tuple[str, bytes]]


def dead_letter_reason(failures: list[ChannelFailure]) -> DeadLetter:
    """Each failed channel once in the reason; the first permanent error's type; the provider's
    code and class (`dlq.provider_code`, `dlq.error_class`) from the first provider answer."""
    reason = "; ".join(f"{f.channel}: {f.error}" for f in failures)
    permanent = [f.error for f in failures if isinstance(f.error, PermanentError)]
    error_type = permanent[0].error_type if permanent else "retries_exhausted"
    headers: list[tuple[str, bytes]] = []
    provider = next((p for f in failures if (p := f.provider) is not None), None)
    if provider is not None:
        if provider.provider_code is not None:
            headers.append(("dlq.provider_code", str(provider.provider_code).encode()))
        headers.append(("dlq.error_class", provider.error_class.encode()))
    return DeadLetter(reason, error_type, max(f.attempts for f in failures), headers)
