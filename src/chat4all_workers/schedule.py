"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

Enough of cron for periodic roles: numbers, `*`, ranges `a-b`, lists `a,b`, and steps `*/n`,
`a/n` (a to the end of the field) or `a-b/n`; day-of-week 0-7 with 0 and 7 both Sunday. When both
day fields are restricted, a day matching either fires, as in classic cron; as in Vixie cron and
cronie, a day field is restricted unless it starts with `*` (so `*/2` is not).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chat4all_workers.frozen import frozen

_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February in a leap year
# The Gregorian calendar, weekdays included, repeats every 400 years: a date-and-weekday rule
# that matches any day at all matches one within this span of any moment.
_CALENDAR_CYCLE = timedelta(days=146_097)


@frozen
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError(f"cron needs 5 fields, got {len(parts)}")
        sets = [
            _parse_field(p, lo, hi, name)
            for p, (lo, hi), name in zip(parts, _BOUNDS, _NAMES, strict=True)
        ]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(
            expression,
            sets[0],
            sets[1],
            sets[2],
            sets[3],
            weekdays,
            days_restricted=not parts[2].startswith("*"),
            weekdays_restricted=not parts[4].startswith("*"),
        )

    def next_after(self, moment: datetime) -> datetime:
        """The first firing time strictly after `moment` (aware or naive-as-UTC); ValueError
        when no date ever matches (`0 0 30 2 *`)."""
        if not self._matches_some_date():
            raise ValueError("cron never fires (no date matches it)")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        candidate = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        # A bound never reached (some date matches), kept short of the year 9999.
        limit = candidate + min(_CALENDAR_CYCLE, datetime.max.replace(tzinfo=UTC) - candidate)
        while candidate < limit:
            if candidate.month not in self.months:
                candidate = (
                    candidate.replace(day=1, hour=0, minute=0) + timedelta(days=32)
                ).replace(day=1)
                continue
            if not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
                continue
            if candidate.minute not in self.minutes:
                candidate += timedelta(minutes=1)
                continue
            return candidate
        raise ValueError("cron never fires (no date matches it)")

    def _matches_some_date(self) -> bool:
        """Whether any date ever matches. With both day fields restricted either rule will do,
        and every month has each weekday; otherwise a day of `days` must exist in one of the
        months (29 February counts), and every such date falls on each weekday in 400 years."""
        if self.days_restricted and self.weekdays_restricted:
            return True
        return min(self.days) <= max(_LONGEST_MONTH[month - 1] for month in self.months)

    def _day_matches(self, moment: datetime) -> bool:
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays


def _parse_field(text: str, lo: int, hi: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        body, slash, step_text = item.partition("/")
        try:
            step = _number(step_text) if slash else 1
            if body == "*":
                start, end = lo, hi
            elif "-" in body:
                a, b = body.split("-", 1)
                start, end = _number(a), _number(b)
            else:
                start = _number(body)
                end = hi if slash else start
        except ValueError:
            raise ValueError(f"cron {name} field {item[:20]!r} is not a number or range") from None
        if step < 1 or not (lo <= start <= end <= hi):
            raise ValueError(f"cron {name} field {item[:20]!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def _number(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)
