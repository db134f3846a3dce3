"""Why a channel failed (delivery/failures.py): what its FAILED status says (`details`), and what
the record's one DLQ copy says about all its failed channels (`dead_letter_reason`)."""

from __future__ import annotations

from chat4all_workers.delivery.failures import (
    ChannelFailure,
    GivenUpError,
    UnknownOutcomeError,
    dead_letter_reason,
)
from chat4all_workers.errors import (
    AccountError,
    ContentLimitError,
    InvalidRecordError,
    ProviderRejectedError,
    ThrottleDeadlineError,
    ThrottledError,
    TransientProviderError,
)

REJECTED = ProviderRejectedError("HTTP 400 (131026): undeliverable", provider_code=131026)
TRANSIENT = TransientProviderError("HTTP 503: no body")  # no code: the HTTP status decided


def test_channel_failure_details_name_the_reason_attempts_and_providers_answer() -> None:
    failure = ChannelFailure("whatsapp", REJECTED, 1)

    assert failure.details() == {
        "reason": "HTTP 400 (131026): undeliverable",
        "attempts": 1,
        "provider_code": 131026,
        "error_class": "rejected",
    }


def test_channel_failure_details_omit_what_is_absent() -> None:
    untried = ChannelFailure("instagram", InvalidRecordError("no recipient"), 0)
    codeless = ChannelFailure("whatsapp", TRANSIENT, 3)

    assert untried.details() == {"reason": "no recipient"}
    assert codeless.details() == {
        "reason": "HTTP 503: no body",
        "attempts": 3,
        "error_class": "transient",
    }


def test_channel_failure_of_a_throttle_deadline_names_the_last_throttle() -> None:
    throttle = ThrottledError("HTTP 400 (130429): rate limit hit", provider_code=130429)
    deadline = ThrottleDeadlineError("still throttled after 3600.0s")
    deadline.__cause__ = throttle

    failure = ChannelFailure("whatsapp", deadline, 12)

    assert failure.provider is throttle
    assert (failure.details()["provider_code"], failure.details()["error_class"]) == (
        130429,
        "throttled",
    )


def test_dead_letter_reason_names_each_failed_channel_once() -> None:
    failures = [
        ChannelFailure("whatsapp", TRANSIENT, 3),
        ChannelFailure("instagram", ContentLimitError("text is 1001 bytes"), 0),
    ]

    letter = dead_letter_reason(failures)

    assert letter.reason == "whatsapp: HTTP 503: no body; instagram: text is 1001 bytes"
    assert letter.attempts == 3  # the most spent on any channel


def test_dead_letter_reason_takes_the_first_permanent_errors_type() -> None:
    failures = [
        ChannelFailure("whatsapp", TRANSIENT, 3),  # retries exhausted: not permanent
        ChannelFailure("instagram", REJECTED, 1),
    ]

    assert dead_letter_reason(failures).error_type == "provider_rejected"


def test_dead_letter_reason_of_retryable_failures_only_is_retries_exhausted() -> None:
    failures = [ChannelFailure("whatsapp", TRANSIENT, 3), ChannelFailure("instagram", TRANSIENT, 2)]

    assert dead_letter_reason(failures).error_type == "retries_exhausted"


def test_dead_letter_reason_headers_carry_the_first_providers_code_and_class() -> None:
    failures = [
        ChannelFailure("whatsapp", InvalidRecordError("no recipient"), 0),
        ChannelFailure("instagram", REJECTED, 1),
        ChannelFailure("whatsapp", AccountError("HTTP 401 (190): expired", provider_code=190), 1),
    ]

    assert dead_letter_reason(failures).headers == [
        ("dlq.provider_code", b"131026"),
        ("dlq.error_class", b"rejected"),
    ]


def test_dead_letter_reason_headers_of_a_provider_answer_without_a_code() -> None:
    letter = dead_letter_reason([ChannelFailure("whatsapp", TRANSIENT, 3)])

    assert letter.headers == [("dlq.error_class", b"transient")]


def test_dead_letter_reason_without_a_providers_answer_has_no_headers() -> None:
    letter = dead_letter_reason([ChannelFailure("whatsapp", InvalidRecordError("no recipient"), 0)])

    assert (letter.error_type, letter.headers) == ("invalid_record", [])


def test_given_up_error_keeps_the_error_type_it_was_given_up_with() -> None:
    assert GivenUpError("again", error_type="provider_rejected").error_type == "provider_rejected"
    assert GivenUpError("again", error_type="").error_type == "permanent"


def test_unknown_outcome_error_is_dead_lettered_as_delivery_unknown() -> None:
    assert UnknownOutcomeError("silent").error_type == "delivery_unknown"
