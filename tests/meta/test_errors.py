"""Meta's error answers classified (meta/errors.py): the code tables, what decides (the (code,
subcode) entry, then the code, then the HTTP status), and the exception an answer becomes.

No I/O: the answers are the bodies Meta sends (tests/channels/test_adapters.py sends them over
HTTP through the real adapters)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from chat4all_workers.errors import (
    AccountError,
    ProviderRejectedError,
    ThrottledError,
    TransientProviderError,
)
from chat4all_workers.meta.errors import (
    ACCOUNT,
    IN_DOUBT,
    INSTAGRAM_CODES,
    PAIR_THROTTLED,
    REJECTED,
    THROTTLED,
    WHATSAPP_CODES,
    WINDOW,
    ErrorClass,
    classify,
    error_for_answer,
)

TRACE = "Az8or2yhqkZfEZ"


def answer(code: Any = None, subcode: Any = None, message: str = "nope", **more: Any) -> bytes:
    """An error answer's body as Meta writes it."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", **more}
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    return orjson.dumps({"error": error})


# -- classify -------------------------------------------------------------------------------------


def test_the_code_tables_hold_the_issue_s_classes() -> None:
    """Every code the contract lists, in the class it lists it under (docs/contract.md)."""
    listed = {
        ErrorClass.THROTTLED: (130429, 131056, 131048, 80007, 4, 17, 32, 613),
        ErrorClass.TRANSIENT: (131057, 133004, 2494100),
        ErrorClass.IN_DOUBT: (1, 2, 131000, 131016),
        ErrorClass.REJECTED: (100, 131026, 131049, 131051, 131053, 130472),
        ErrorClass.WINDOW: (131047,),
        ErrorClass.TEMPLATE: (132000, 132001, 132005, 132007, 132012, 132015, 132016),
        ErrorClass.ACCOUNT: (0, 33, 190, 10, 200, 250, 299, 368, 131031, 131042, 133010),
    }
    for error_class, codes in listed.items():
        for code in codes:
            assert classify(400, code, None, WHATSAPP_CODES).error_class is error_class, code
    for code in (4, 17, 32, 613):
        assert classify(400, code, None, INSTAGRAM_CODES).error_class is ErrorClass.THROTTLED
    assert classify(400, 131056, None, WHATSAPP_CODES).scope == "pair"
    assert classify(400, 80007, None, WHATSAPP_CODES).scope == "app"
    assert classify(400, 4, None, INSTAGRAM_CODES).scope == "app"
    assert classify(400, 100, 33, WHATSAPP_CODES).error_class is ErrorClass.ACCOUNT
    assert classify(403, 10, 2534022, INSTAGRAM_CODES).error_class is ErrorClass.WINDOW


def test_classify_takes_the_code_and_subcode_entry_before_the_codes() -> None:
    assert classify(400, 10, 2018278, INSTAGRAM_CODES) == WINDOW  # outside the window
    assert classify(400, 10, None, INSTAGRAM_CODES) == ACCOUNT  # a permission
    assert classify(400, 10, 999, INSTAGRAM_CODES) == ACCOUNT  # a subcode of no meaning here


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (400, 130429, THROTTLED),  # throttling as HTTP 400, as Meta sends it
        (500, 131026, REJECTED),
        (429, 100, REJECTED),
        (401, 131000, IN_DOUBT),  # "something went wrong": it may have been taken
        (503, 190, ACCOUNT),
        (400, 131056, PAIR_THROTTLED),
    ],
)
def test_classify_takes_the_code_before_the_http_status(
    status: int, code: int, verdict: object
) -> None:
    assert classify(status, code, None, WHATSAPP_CODES) == verdict


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (429, THROTTLED),
        (500, IN_DOUBT),  # no Graph error to say it was not taken
        (503, IN_DOUBT),
        (504, IN_DOUBT),
        (401, ACCOUNT),
        (403, ACCOUNT),
        (400, REJECTED),
        (404, REJECTED),
    ],
)
@pytest.mark.parametrize("code", [None, 999_999])
def test_classify_falls_back_to_the_http_status_for_an_unknown_code(
    status: int, verdict: object, code: int | None
) -> None:
    assert classify(status, code, 7, WHATSAPP_CODES) == verdict


# -- error_for_answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 130429, ThrottledError),
        (500, 131000, TransientProviderError),
        (400, 131026, ProviderRejectedError),
        (401, 190, AccountError),
    ],
)
def test_error_for_answer_builds_the_exception_of_its_class(
    status: int, code: int, expected: type[Exception]
) -> None:
    error = error_for_answer(status, answer(code, fbtrace_id=TRACE), None, WHATSAPP_CODES)

    assert type(error) is expected
    assert (error.provider_code, error.fbtrace_id) == (code, TRACE)


def test_error_for_answer_text_names_status_code_subcode_details_and_trace() -> None:
    details = {"details": "expired"}
    body = answer(190, 463, "Error validating access token", error_data=details, fbtrace_id=TRACE)

    error = error_for_answer(401, body, None, WHATSAPP_CODES)

    assert str(error) == (
        "HTTP 401 (190/463): Error validating access token: expired [fbtrace_id Az8or2yhqkZfEZ]"
    )


def test_error_for_answer_text_holds_the_providers_words_only() -> None:
    body = answer(
        131026,
        message="(#131026) Message undeliverable",
        error_user_title="Recipient unknown",
        error_user_msg="the user's own words",
        is_transient=False,
    )

    error = error_for_answer(400, body, None, WHATSAPP_CODES)

    assert str(error) == "HTTP 400 (131026): (#131026) Message undeliverable"


def test_error_for_answer_reads_a_code_a_gateway_sent_as_text() -> None:
    error = error_for_answer(400, answer("131026"), None, WHATSAPP_CODES)

    assert isinstance(error, ProviderRejectedError)
    assert error.provider_code == 131026


def test_error_for_answer_ignores_a_code_that_is_not_a_number() -> None:
    error = error_for_answer(503, answer(True, message="odd"), None, WHATSAPP_CODES)

    assert isinstance(error, TransientProviderError)
    assert error.provider_code is None
    assert str(error) == "HTTP 503: odd"


def test_error_for_answer_quotes_a_body_that_is_not_meta_s_short() -> None:
    page = b"<html>" + b"x" * 1000 + b"</html>"

    error = error_for_answer(502, page, None, WHATSAPP_CODES)

    assert isinstance(error, TransientProviderError)
    assert str(error) == "HTTP 502: " + page.decode()[:300]
    assert str(error_for_answer(502, b"", None, WHATSAPP_CODES)) == "HTTP 502: no body"


def test_error_for_answer_cuts_a_long_trace_id() -> None:
    error = error_for_answer(400, answer(131026, fbtrace_id="T" * 500), None, WHATSAPP_CODES)

    assert error.fbtrace_id == "T" * 64


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("Wed, 21 Oct 2026 07:28:00 GMT", None), (None, None)],
)
def test_error_for_answer_reads_retry_after_in_seconds(
    retry_after: str | None, seconds: float | None
) -> None:
    throttled = error_for_answer(429, answer(), retry_after, WHATSAPP_CODES)
    transient = error_for_answer(503, answer(), retry_after, WHATSAPP_CODES)

    assert isinstance(throttled, ThrottledError)
    assert isinstance(transient, TransientProviderError)
    assert throttled.retry_after_s == transient.retry_after_s == seconds


def test_error_for_answer_marks_a_pair_throttle() -> None:
    pair = error_for_answer(400, answer(131056), "3", WHATSAPP_CODES)
    account = error_for_answer(400, answer(130429), None, WHATSAPP_CODES)

    assert isinstance(pair, ThrottledError)
    assert isinstance(account, ThrottledError)
    assert (pair.pair, pair.retry_after_s) == (True, 3.0)
    assert account.pair is False


def test_error_for_answer_uses_the_channels_table() -> None:
    on_whatsapp = error_for_answer(400, answer(1200), None, WHATSAPP_CODES)
    on_instagram = error_for_answer(400, answer(1200), None, INSTAGRAM_CODES)

    assert isinstance(on_whatsapp, ProviderRejectedError)  # 1200 is not WhatsApp's: HTTP 400
    assert isinstance(on_instagram, TransientProviderError)


@pytest.mark.parametrize("code", ["\u00b2", "1" * 5000], ids=["superscript", "5000-digits"])
def test_error_for_answer_falls_back_to_the_http_status_for_a_code_it_cannot_read(
    code: str,
) -> None:
    error = error_for_answer(503, answer(code), None, WHATSAPP_CODES)

    assert isinstance(error, TransientProviderError)
    assert error.provider_code is None
