"""One setting's value (config_values.py): parsed from text or TOML into the field's type, held to
the field's rules, and a secret that never shows itself. Errors name the key and the source, on
one line, and never quote a secret."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest

from chat4all_workers.config_values import (
    Secret,
    json_value,
    parse_text,
    parse_toml,
    printable,
    shown_key,
    validate,
)
from chat4all_workers.errors import ConfigError

KEY, ENV, FILE = "section.key", "env SECTION_KEY", "supervisor.toml"
PASSWORD = "pw-0xDEADBEEF"


def problem(call: Any, *args: Any) -> str:
    """The message of the ConfigError `call(*args)` raises."""
    with pytest.raises(ConfigError) as error:
        call(*args)
    return str(error.value)


# -- parse_text -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("1", True), ("true", True), (" YES ", True), ("on", True)],
        *[("0", False), ("False", False), ("no", False), ("off", False), ("", False)],
    ],
)
def test_parse_text_reads_booleans(raw: str, expected: bool) -> None:
    assert parse_text(KEY, ENV, raw, bool) is expected


def test_parse_text_refuses_a_word_that_is_not_a_boolean() -> None:
    message = problem(parse_text, KEY, ENV, "maybe", bool)

    assert message == "section.key (env SECTION_KEY): expected true or false, got 'maybe'"


@pytest.mark.parametrize(("raw", "expected"), [(" 42 ", 42), ("+7", 7), ("-3", -3)])
def test_parse_text_reads_integers(raw: str, expected: int) -> None:
    assert parse_text(KEY, ENV, raw, int) == expected


@pytest.mark.parametrize("raw", ["4.0", "1e3", "0x10", "\u0663", "1" * 31])
def test_parse_text_refuses_what_is_not_a_plain_decimal_integer(raw: str) -> None:
    assert "expected an integer, got" in problem(parse_text, KEY, ENV, raw, int)


def test_parse_text_reads_numbers_and_refuses_words() -> None:
    assert parse_text(KEY, ENV, "0.5", float) == 0.5
    assert parse_text(KEY, ENV, "1e3", float) == 1000.0
    assert problem(parse_text, KEY, ENV, "fast", float).endswith("expected a number, got 'fast'")


def test_parse_text_keeps_a_string_as_given_and_wraps_a_secret() -> None:
    assert parse_text(KEY, ENV, " spaced ", str) == " spaced "
    assert parse_text(KEY, ENV, PASSWORD, Secret) == Secret(PASSWORD)


def test_parse_text_reads_a_list_dropping_blanks() -> None:
    assert parse_text(KEY, ENV, "a, b,,c ", tuple[str, ...]) == ("a", "b", "c")


def test_parse_text_reads_a_table_of_typed_values() -> None:
    assert parse_text(KEY, ENV, "a=1, b = 2", dict[str, int]) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a", "expected comma-separated name=value pairs"), ("a=x", "expected an integer, got 'x'")],
)
def test_parse_text_refuses_a_malformed_table(raw: str, expected: str) -> None:
    assert problem(parse_text, KEY, ENV, raw, dict[str, int]).endswith(expected)


def test_parse_text_refuses_a_type_it_does_not_know() -> None:
    assert "unsupported setting type list[int]" in problem(parse_text, KEY, ENV, "1", list[int])


def test_parse_text_quotes_a_long_value_cut_short() -> None:
    message = problem(parse_text, KEY, ENV, "x" * 200, int)

    assert message.endswith("... (202 chars)")
    assert len(message) < 150


# -- parse_toml -----------------------------------------------------------------------------------


def test_parse_toml_takes_an_integer_for_a_number() -> None:
    value = parse_toml(KEY, FILE, 3, float)

    assert (value, type(value)) == (3.0, float)


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (True, float, "expected number, got boolean True"),
        (True, int, "expected integer, got boolean True"),
        (5, str, "expected string, got integer 5"),
        ("5", int, "expected integer, got string '5'"),
        ([1], tuple[str, ...], "expected array of strings, got array [1]"),
        (datetime.date(2026, 1, 1), str, "expected string, got date/time"),
        ({"a": 1}, bool, "expected boolean, got table {'a': 1}"),
    ],
)
def test_parse_toml_names_the_type_expected_and_the_one_given(
    value: object, kind: Any, expected: str
) -> None:
    assert expected in problem(parse_toml, KEY, FILE, value, kind)


def test_parse_toml_names_a_wrong_typed_secret_by_its_type_only() -> None:
    message = problem(parse_toml, KEY, FILE, [PASSWORD], Secret)

    assert message == "section.key (supervisor.toml): expected string, got array"


def test_parse_toml_takes_a_list_as_an_array_or_as_comma_separated_text() -> None:
    assert parse_toml(KEY, FILE, ["a", "b"], tuple[str, ...]) == ("a", "b")
    assert parse_toml(KEY, FILE, "a, b", tuple[str, ...]) == ("a", "b")


def test_parse_toml_names_a_table_entry_by_its_key() -> None:
    assert parse_toml(KEY, FILE, {"a": 1}, dict[str, int]) == {"a": 1}
    assert problem(parse_toml, KEY, FILE, {"a": "x"}, dict[str, int]).startswith(
        "section.key.a (supervisor.toml): expected integer"
    )


# -- validate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "value", "expected"),
    [
        ({}, 0, "must be greater than 0, got 0"),
        ({}, -1.5, "must be greater than 0, got -1.5"),
        ({"min": 1}, 0, "must be at least 1, got 0"),
        ({"max": 10}, 11, "must be at most 10, got 11"),
        ({}, 2**31, "must be at most 2147483647, got 2147483648"),
        ({}, 2e9, "must be at most 1000000000.0, got 2000000000.0"),
        ({}, math.nan, "must be a finite number, got nan"),
        ({"min": 0}, math.inf, "must be a finite number, got inf"),
        ({"choices": ("earliest", "latest")}, "mid", "must be one of earliest, latest, got 'mid'"),
    ],
)
def test_validate_holds_a_value_to_the_fields_rules(
    rules: dict[str, Any], value: object, expected: str
) -> None:
    assert problem(validate, KEY, ENV, rules, value) == f"section.key (env SECTION_KEY): {expected}"


@pytest.mark.parametrize(
    ("rules", "value"),
    [({"min": 0}, 0), ({"max": 10}, 10), ({}, False), ({"choices": ("a", "b")}, "b"), ({}, "x")],
)
def test_validate_accepts_a_value_within_the_rules(rules: dict[str, Any], value: object) -> None:
    validate(KEY, ENV, rules, value)


def test_validate_quotes_a_checked_string_but_never_a_checked_secret() -> None:
    def check(text: str) -> str | None:
        return "not a URL"

    plain = problem(validate, KEY, ENV, {"check": check}, "graph.facebook.com")
    secret = problem(validate, KEY, ENV, {"check": check}, Secret(PASSWORD))

    assert plain.endswith("not a URL: 'graph.facebook.com'")
    assert secret == "section.key (env SECTION_KEY): not a URL"


def test_validate_names_each_entry_of_a_table_and_checks_its_name() -> None:
    def check_key(name: str) -> str | None:
        return "not a topic name" if " " in name else None

    bad_value = problem(validate, KEY, FILE, {}, {"ok": 1, "zero": 0})
    bad_name = problem(validate, KEY, FILE, {"check_key": check_key}, {"a b": 1})
    dotted = problem(validate, KEY, FILE, {}, {"a.b": 0})

    assert bad_value == "section.key.zero (supervisor.toml): must be greater than 0, got 0"
    assert bad_name == "section.key.a b (supervisor.toml): the name is not a topic name"
    assert dotted.startswith("section.key.'a.b' (supervisor.toml)")  # not a key path


# -- Secret ---------------------------------------------------------------------------------------


def test_secret_repr_and_str_hide_the_value() -> None:
    secret = Secret(PASSWORD)

    assert repr(secret) == str(secret) == "Secret('**********')"
    assert f"{secret}" == "Secret('**********')"
    assert repr(Secret("")) == "Secret('')"
    assert secret.get() == PASSWORD


def test_secret_is_true_when_set_and_equal_by_value() -> None:
    assert Secret("a")
    assert not Secret("")
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://chat4all:{PASSWORD}@db.internal:5432/chat4all",
            "postgresql://chat4all:***@db.internal:5432/chat4all",
        ),
        (f"redis://:{PASSWORD}@cache:6379/2", "redis://:***@cache:6379/2"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        (f"postgresql://u@db/x?password={PASSWORD}", "postgresql://u@db/x?password=***"),
        (f"postgresql://u:{PASSWORD}/x@db/x", "postgresql://***"),
        (PASSWORD, "***"),
        ("", ""),
    ],
)
def test_secret_masks_only_the_password_of_a_url(url: str, shown: str) -> None:
    assert Secret(url).masked() == shown


# -- how values are shown -------------------------------------------------------------------------


def test_printable_is_one_line_of_text_with_secrets_masked() -> None:
    assert printable(Secret(PASSWORD)) == "***"
    assert printable(("router", "outbox")) == "router,outbox"
    assert printable({"router": "transient", "gc": "temporary"}) == "router=transient,gc=temporary"
    assert printable(2.5) == "2.5"


def test_json_value_keeps_types_with_secrets_masked() -> None:
    assert json_value(Secret(PASSWORD)) == "***"
    assert json_value(("router", "outbox")) == ["router", "outbox"]
    assert json_value({"a": 1}) == {"a": 1}
    assert json_value(30.0) == 30.0


def test_shown_key_quotes_a_name_that_could_be_misread() -> None:
    assert shown_key("router") == "router"
    assert shown_key("a.b") == "'a.b'"
    assert shown_key("new\nline") == "'new\\nline'"
    assert shown_key("k" * 70).endswith("... (72 chars)")
