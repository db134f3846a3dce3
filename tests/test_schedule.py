"""The five-field cron parser and its next firing time (schedule.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from chat4all_workers.schedule import Cron


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- parsing: fields ----------------------------------------------------------------------------


def test_cron_parse_star_takes_the_whole_range_of_each_field() -> None:
    cron = Cron.parse("* * * * *")

    assert cron.minutes == frozenset(range(60))
    assert cron.hours == frozenset(range(24))
    assert cron.days == frozenset(range(1, 32))
    assert cron.months == frozenset(range(1, 13))
    assert cron.weekdays == frozenset(range(7))
    assert not cron.days_restricted
    assert not cron.weekdays_restricted


def test_cron_parse_reads_numbers_ranges_and_lists() -> None:
    cron = Cron.parse("5,10 1-3 1,15-16 6 1-5")

    assert cron.minutes == {5, 10}
    assert cron.hours == {1, 2, 3}
    assert cron.days == {1, 15, 16}
    assert cron.months == {6}
    assert cron.weekdays == {1, 2, 3, 4, 5}


def test_cron_parse_steps_over_star_range_and_start() -> None:
    cron = Cron.parse("*/15 8-18/4 5/10 */5 *")

    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {8, 12, 16}
    assert cron.days == {5, 15, 25}  # `a/n`: from a to the end of the field
    assert cron.months == {1, 6, 11}


def test_cron_parse_reads_day_of_week_7_as_sunday() -> None:
    cron = Cron.parse("0 0 * * 7")

    assert cron.weekdays == {0}


def test_cron_parse_merges_0_and_7_into_one_sunday() -> None:
    cron = Cron.parse("0 0 * * 0-7")

    assert cron.weekdays == frozenset(range(7))


def test_cron_parse_marks_a_day_field_restricted_unless_it_starts_with_a_star() -> None:
    cron = Cron.parse("0 0 1-31 * *")

    assert cron.days_restricted
    assert not cron.weekdays_restricted


@pytest.mark.parametrize("expression", ["0 0 */2 * */2", "0 0 */1 * */3", "0 0 *,5 * *,1"])
def test_cron_parse_reads_a_day_field_starting_with_a_star_as_unrestricted(
    expression: str,
) -> None:
    cron = Cron.parse(expression)  # as Vixie cron and cronie do

    assert not cron.days_restricted
    assert not cron.weekdays_restricted


def test_cron_parse_accepts_any_whitespace_between_fields() -> None:
    cron = Cron.parse("  30\t2 *  * *\n")

    assert (cron.minutes, cron.hours) == (frozenset({30}), frozenset({2}))


# -- parsing: refused input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "count"),
    [("", 0), ("* * * *", 4), ("* * * * * *", 6), ("@daily", 1)],
)
def test_cron_parse_refuses_anything_but_five_fields(expression: str, count: int) -> None:
    with pytest.raises(ValueError, match=f"^cron needs 5 fields, got {count}$"):
        Cron.parse(expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("60 * * * *", "cron minute field '60' is outside 0-59"),
        ("* 24 * * *", "cron hour field '24' is outside 0-23"),
        ("* * 0 * *", "cron day of month field '0' is outside 1-31"),
        ("* * 32 * *", "cron day of month field '32' is outside 1-31"),
        ("* * * 0 *", "cron month field '0' is outside 1-12"),
        ("* * * 13 *", "cron month field '13' is outside 1-12"),
        ("* * * * 8", "cron day of week field '8' is outside 0-7"),
        ("10-5 * * * *", "cron minute field '10-5' is outside 0-59"),  # a reversed range
        ("*/0 * * * *", "cron minute field '*/0' is outside 0-59"),  # a zero step
        ("1,2,70 * * * *", "cron minute field '70' is outside 0-59"),  # names the bad item
    ],
)
def test_cron_parse_refuses_values_outside_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message.replace('*', '[*]')}$"):
        Cron.parse(expression)


@pytest.mark.parametrize(
    ("expression", "field", "item"),
    [
        ("x * * * *", "minute", "x"),
        ("* * * jan *", "month", "jan"),  # month names are not supported
        ("0 0 * * sun", "day of week", "sun"),  # nor day names
        ("1- * * * *", "minute", "1-"),
        ("-1 * * * *", "minute", "-1"),
        ("* 1,,2 * * *", "hour", ""),
        ("*/x * * * *", "minute", "*/x"),
        ("1-2-3 * * * *", "minute", "1-2-3"),
        ("1/2/3 * * * *", "minute", "1/2/3"),
        ("*/ * * * *", "minute", "*/"),  # an empty step
        ("* 5/ * * *", "hour", "5/"),
        ("* * 1-5/ * *", "day of month", "1-5/"),
        ("+5 * * * *", "minute", "+5"),
        ("\uff15 * * * *", "minute", "\uff15"),  # a full-width digit: isdigit() but not ASCII
    ],
)
def test_cron_parse_refuses_what_is_not_a_number_or_range(
    expression: str, field: str, item: str
) -> None:
    with pytest.raises(ValueError, match="is not a number or range") as error:
        Cron.parse(expression)

    assert str(error.value) == f"cron {field} field {item!r} is not a number or range"


def test_cron_parse_quotes_at_most_20_characters_of_a_bad_item() -> None:
    with pytest.raises(ValueError, match="is not a number or range") as error:
        Cron.parse("x" * 50 + " * * * *")

    assert str(error.value) == f"cron minute field {'x' * 20!r} is not a number or range"


# -- next_after ---------------------------------------------------------------------------------


def test_cron_next_after_is_strictly_after_a_firing_moment() -> None:
    cron = Cron.parse("0 * * * *")

    assert cron.next_after(at(2025, 5, 1, 10, 0)) == at(2025, 5, 1, 11, 0)


def test_cron_next_after_skips_the_rest_of_a_firing_minute() -> None:
    cron = Cron.parse("30 10 * * *")
    moment = at(2025, 5, 1, 10, 30) + timedelta(seconds=59, microseconds=999_999)

    assert cron.next_after(moment) == at(2025, 5, 2, 10, 30)


def test_cron_next_after_every_minute_is_the_next_whole_minute() -> None:
    cron = Cron.parse("* * * * *")

    assert cron.next_after(at(2025, 5, 1, 10, 7) + timedelta(seconds=1)) == at(2025, 5, 1, 10, 8)


def test_cron_next_after_walks_minutes_then_hours() -> None:
    cron = Cron.parse("15,45 9-17/4 * * *")

    fires = [cron.next_after(at(2025, 5, 1, 9, 45))]
    fires.append(cron.next_after(fires[-1]))
    fires.append(cron.next_after(fires[-1]))
    fires.append(cron.next_after(fires[-1]))

    assert fires == [
        at(2025, 5, 1, 13, 15),
        at(2025, 5, 1, 13, 45),
        at(2025, 5, 1, 17, 15),
        at(2025, 5, 1, 17, 45),
    ]
    assert cron.next_after(fires[-1]) == at(2025, 5, 2, 9, 15)


def test_cron_next_after_crosses_a_month_boundary() -> None:
    cron = Cron.parse("0 3 1 * *")

    assert cron.next_after(at(2025, 4, 30, 23, 59)) == at(2025, 5, 1, 3, 0)


def test_cron_next_after_crosses_a_year_boundary() -> None:
    cron = Cron.parse("0 0 1 1 *")

    assert cron.next_after(at(2025, 12, 31, 23, 59)) == at(2026, 1, 1, 0, 0)


def test_cron_next_after_skips_months_without_the_day() -> None:
    cron = Cron.parse("0 12 31 * *")

    assert cron.next_after(at(2025, 1, 31, 12, 0)) == at(2025, 3, 31, 12, 0)
    assert cron.next_after(at(2025, 3, 31, 12, 0)) == at(2025, 5, 31, 12, 0)


def test_cron_next_after_finds_the_next_leap_day() -> None:
    cron = Cron.parse("0 0 29 2 *")

    assert cron.next_after(at(2025, 3, 1)) == at(2028, 2, 29)


def test_cron_next_after_finds_the_leap_day_after_a_century_that_is_not_leap() -> None:
    cron = Cron.parse("0 0 29 2 *")

    assert cron.next_after(at(2096, 2, 29)) == at(2104, 2, 29)  # 2100 has no 29 February


def test_cron_next_after_finds_a_date_on_a_weekday_decades_ahead() -> None:
    cron = Cron.parse("0 0 29 2 */7")  # 29 February on a Sunday (the day of week reads as *)

    assert cron.next_after(at(2088, 3, 1)) == at(2128, 2, 29)


def test_cron_next_after_fires_on_the_named_months_only() -> None:
    cron = Cron.parse("0 0 1 3,9 *")

    assert cron.next_after(at(2025, 3, 1)) == at(2025, 9, 1)
    assert cron.next_after(at(2025, 9, 1)) == at(2026, 3, 1)


def test_cron_next_after_fires_on_the_weekday_when_only_the_weekday_is_restricted() -> None:
    cron = Cron.parse("0 9 * * 1")  # Mondays; 2025-05-01 is a Thursday

    assert cron.next_after(at(2025, 5, 1)) == at(2025, 5, 5, 9, 0)


def test_cron_next_after_reads_sunday_as_0_and_7_alike() -> None:
    sunday_0, sunday_7 = Cron.parse("0 0 * * 0"), Cron.parse("0 0 * * 7")

    assert sunday_0.next_after(at(2025, 5, 1)) == at(2025, 5, 4)
    assert sunday_7.next_after(at(2025, 5, 1)) == at(2025, 5, 4)


def test_cron_next_after_needs_both_when_only_the_day_of_month_is_restricted() -> None:
    cron = Cron.parse("0 0 13 * *")

    assert cron.next_after(at(2025, 5, 1)) == at(2025, 5, 13)  # a Tuesday: any weekday goes


def test_cron_next_after_fires_on_either_day_rule_when_both_are_restricted() -> None:
    cron = Cron.parse("0 0 13 * 5")  # the 13th, or any Friday (classic cron)

    fires = [cron.next_after(at(2025, 5, 1))]
    fires.append(cron.next_after(fires[-1]))
    fires.append(cron.next_after(fires[-1]))

    assert fires == [at(2025, 5, 2), at(2025, 5, 9), at(2025, 5, 13)]


@pytest.mark.parametrize(
    ("expression", "first"),
    [
        ("0 0 */2 * 1", at(2025, 5, 5)),  # an odd day that is a Monday, not the 3rd (odd)
        ("0 0 13 * */7", at(2025, 7, 13)),  # a 13th that is a Sunday, not Sunday the 4th
    ],
)
def test_cron_next_after_needs_both_when_a_day_field_starts_with_a_star(
    expression: str, first: datetime
) -> None:
    cron = Cron.parse(expression)

    assert cron.next_after(at(2025, 5, 1)) == first


def test_cron_next_after_fires_on_the_weekday_when_both_are_restricted_and_no_day_exists() -> None:
    cron = Cron.parse("0 0 30 2 1")  # 30 February never comes; the Mondays of February do

    assert cron.next_after(at(2025, 3, 1)) == at(2026, 2, 2)


def test_cron_next_after_reads_a_naive_moment_as_utc() -> None:
    cron = Cron.parse("0 12 * * *")

    assert cron.next_after(datetime(2025, 5, 1, 11, 59)) == at(2025, 5, 1, 12, 0)


def test_cron_next_after_converts_an_aware_moment_to_utc() -> None:
    cron = Cron.parse("0 12 * * *")
    sao_paulo = timezone(timedelta(hours=-3))

    fire = cron.next_after(datetime(2025, 5, 1, 8, 30, tzinfo=sao_paulo))  # 11:30 UTC

    assert fire == at(2025, 5, 1, 12, 0)
    assert fire.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "expression",
    ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *", "0 0 30 2 */7", "0 0 31 2,4 */2"],
)
def test_cron_next_after_refuses_an_expression_that_never_fires(expression: str) -> None:
    cron = Cron.parse(expression)

    with pytest.raises(ValueError, match=r"^cron never fires \(no date matches it\)$"):
        cron.next_after(at(2025, 1, 1))
