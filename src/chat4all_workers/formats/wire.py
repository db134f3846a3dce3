"""Reading the JSON records the roles consume, with reasons that name the field.

A record is decoded once (`read_record`) and its fields are read through the `Fields` it returns,
which collects every problem instead of stopping at the first: a dead-lettered record says all
that is wrong with it, each as `field: what` (`conversation_id: 9223372036854775808 is outside
the bigint range`), and quotes at most a few dozen characters of what the record held, so a
reason always fits a `dlq.reason` header.

orjson reads the records. What it refuses is explained rather than echoed: a tombstone (no value
at all), bytes that are not UTF-8 (orjson calls every such case "surrogates not allowed"), and
JSON that is well formed but holds what orjson cannot represent (a `\\ud800` escape, half of a
character; a number that is infinite as a double). For those the standard library's parser
reads the document again, so the reason can name the fields that hold them, and the record's
other problems are still found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from chat4all_workers.errors import InvalidRecordError

# The range of a PostgreSQL bigint (ids) and integer (counts) column.
BIGINT = (-(2**63), 2**63 - 1)
INTEGER = (-(2**31), 2**31 - 1)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# RFC 3339 date-time: full date, `T` (or a space, as RFC 3339 allows), time with seconds, an
# optional fraction, and a mandatory offset.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_MAX_TIMESTAMP_CHARS = 40
_QUOTE_CHARS = 40
_MAX_PROBLEMS = 8
T = TypeVar("T")


def read_record(value: bytes | None) -> Fields:
    """The fields of a record holding one JSON object; InvalidRecordError when it holds none."""
    if value is None:
        raise InvalidRecordError("tombstone: the record has no value")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        doc, problems = _read_again(value, exc)
    else:
        problems = []
    if not isinstance(doc, dict):
        raise InvalidRecordError(f"not a JSON object but {describe(doc)}")
    return Fields(doc, problems)


def present(value: T | None) -> T:
    """A required field's value, read before `Fields.done()` passed (so it is there)."""
    assert value is not None, "a required field is missing after Fields.done()"
    return value


def _read_again(value: bytes, exc: orjson.JSONDecodeError) -> tuple[Any, list[str]]:
    """What orjson refused: the reason, or the document as the standard library reads it with
    the problems orjson could not live with, by field."""
    if not value:
        raise InvalidRecordError("empty value: not JSON")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        try:  # only surrogates, UTF-8-encoded (as a careless encoder writes them): read on
            text = value.decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            raise InvalidRecordError(
                f"not UTF-8: byte 0x{value[err.start]:02x} at offset {err.start} is not valid there"
            ) from None
    reason = str(exc).split(": line ")[0]
    if "depth limit" in reason:
        raise InvalidRecordError("not readable: JSON nested more than 1024 levels deep")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRecordError(f"not JSON: {reason} ({_where(exc)})") from None
    problems = [f"{path}: {what}" for path, what in _unrepresentable(doc)]
    if not problems:  # orjson refused something the walk does not know: say what orjson said
        problems = [f"not readable JSON: {reason} ({_where(exc)})"]
    return doc, problems


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _where(exc: orjson.JSONDecodeError) -> str:
    return f"at byte {exc.pos}"


def _unrepresentable(doc: Any) -> Iterator[tuple[str, str]]:
    """(path, problem) for each string holding a lone surrogate and each infinite number."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                child = _child(path, key)
                if _has_surrogate(key):
                    yield child, "the name holds a lone surrogate (half a character)"
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{n}]", item) for n, item in enumerate(value))
        elif isinstance(value, str) and _has_surrogate(value):
            yield path or "(the document)", "holds a lone surrogate (half a character)"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            yield path or "(the document)", "a number too large for a double"


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _child(path: str, key: str) -> str:
    name = key if key.isidentifier() and len(key) <= _QUOTE_CHARS else quote(key)
    return f"{path}.{name}" if path else name


def quote(value: str) -> str:
    """A string as a reason shows it: in double quotes, cut short, on one line; what does not
    print (controls, a right-to-left override, half a surrogate pair) as a `\\u` escape, the
    rest (accents, emoji) as itself."""
    shown = "".join(_escape(c) for c in value[:_QUOTE_CHARS])
    return f'"{shown}"' if len(value) <= _QUOTE_CHARS else f'"{shown}..." ({len(value)} chars)'


def _escape(char: str) -> str:
    if char in ('"', "\\"):
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def describe(value: Any) -> str:
    """A JSON value's type, as a reason names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {str(value)[:_QUOTE_CHARS]}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def uuid_text(value: str) -> str | None:
    """A UUID in its 8-4-4-4-12 form (any case), in lower case: the form uuid.UUID prints,
    without its cost on every record; None if it is not one."""
    return value.lower() if _UUID.fullmatch(value) else None


def rfc3339(value: str) -> datetime | str:
    """The moment an RFC 3339 date-time with its offset names (`2026-11-28T10:30:00Z`), in UTC
    and within the years 1-9999; else what is wrong with it, as a reason says it."""
    match = _RFC3339.fullmatch(value) if len(value) <= _MAX_TIMESTAMP_CHARS else None
    if match is None:
        return f"not an RFC 3339 date-time: {quote(value)}"
    if value[-1] == "Z" and value[10] == "T":
        # The usual spelling, in UTC, read as it is (Python reads `Z` since 3.11, and cuts a
        # finer fraction to microseconds as the rebuilt one below is cut): 0.6 us a record less.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return f"not a valid date and time: {quote(value)}"
    date, time, fraction, offset = match.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.fromisoformat(f"{date}T{time}{(fraction or '')[:7]}{offset}")
    except ValueError:
        return f"not a valid date and time: {quote(value)}"
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return f"outside the years 1-9999 in UTC: {quote(value)}"


class Fields:
    """The fields of one JSON object, read with their rules; every problem is kept, under the
    field's path (`payload.content`), and `done()` raises them all as one InvalidRecordError."""

    __slots__ = ("_name", "_parent", "doc", "problems")

    def __init__(
        self,
        doc: Mapping[str, Any],
        problems: list[str] | None = None,
        *,
        parent: Fields | None = None,
        name: str = "",
    ) -> None:
        """`parent` and `name`: a nested object's place, made into its path only when one of
        its fields has a problem (a record read without one never builds a path)."""
        self.doc = doc
        self.problems = problems if problems is not None else []
        self._parent = parent
        self._name = name

    def done(self) -> None:
        if self.problems:
            shown = self.problems[:_MAX_PROBLEMS]
            more = len(self.problems) - len(shown)
            raise InvalidRecordError("; ".join(shown) + (f"; and {more} more" if more else ""))

    def path(self, name: str) -> str:
        return _child(self._where(), name)

    def _where(self) -> str:
        """This object's own path; "" for the record."""
        return "" if self._parent is None else self._parent.path(self._name)

    def problem(self, name: str, what: str) -> None:
        self.problem_at(self.path(name), what)

    def problem_at(self, path: str, what: str) -> None:
        """A problem of something inside a field (`channels[2]`)."""
        self.problems.append(f"{path}: {what}")

    def get(self, name: str, *, required: bool) -> Any:
        """The raw value; a required field that is absent (or null) is a problem."""
        value = self.doc.get(name)
        if value is None and required:
            self._absent(name)
        return value

    def _absent(self, name: str) -> None:
        self.problem(name, "missing" if name not in self.doc else "must not be null")

    def _typed(self, name: str, kind: type[T], what: str, *, required: bool) -> T | None:
        """The raw value when it is a `kind`; anything else is a problem (`must be {what}`).
        (`get` written out: read for nearly every field of every record.)"""
        value = self.doc.get(name)
        if value is None:
            if required:
                self._absent(name)
            return None
        if isinstance(value, kind):
            return value
        self.problem(name, f"must be {what}, got {describe(value)}")
        return None

    def uuid(self, name: str, *, required: bool = True) -> str | None:
        """A UUID in its 8-4-4-4-12 form, in lower case (any case accepted)."""
        value = self._typed(name, str, "a UUID string", required=required)
        if value is None:
            return None
        canonical = uuid_text(value)
        if canonical is None:
            self.problem(name, f"not a UUID: {quote(value)}")
        return canonical

    def integer(
        self, name: str, *, required: bool = True, bounds: tuple[int, int] = BIGINT
    ) -> int | None:
        """An integer in `bounds` (the column it lands in): not a boolean, not a float."""
        value = self.get(name, required=required)
        if value is None:
            return None
        low, high = bounds
        if type(value) is int and low <= value <= high:  # the common case, first
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
            # orjson reads an integer beyond 64 bits as a float: its digits are gone
            self.problem(name, f"about {value:.3g} is outside the {_column(bounds)} range")
        elif not isinstance(value, int) or isinstance(value, bool):
            self.problem(name, f"must be an integer, got {describe(value)}")
        else:
            self.problem(name, f"{value} is outside the {_column(bounds)} range")
        return None

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        max_chars: int | None = None,
        allow_empty: bool = False,
    ) -> str | None:
        value = self._typed(name, str, "a string", required=required)
        if value is None:
            return None
        if not value and not allow_empty:
            self.problem(name, "must not be empty")
            return None
        if max_chars is not None and len(value) > max_chars:
            self.problem(name, f"longer than {max_chars} characters ({len(value)})")
            return None
        return value

    def choice(self, name: str, choices: Sequence[str], *, required: bool = True) -> str | None:
        value = self.get(name, required=required)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            got = quote(value) if isinstance(value, str) else describe(value)
            self.problem(name, f"must be one of {', '.join(choices)}, got {got}")
            return None
        return value

    def timestamp(self, name: str, *, required: bool = True) -> datetime | None:
        """An RFC 3339 date-time with its offset (`rfc3339`)."""
        value = self._typed(name, str, "an RFC 3339 string", required=required)
        if value is None:
            return None
        moment = rfc3339(value)
        if isinstance(moment, str):
            self.problem(name, moment)
            return None
        return moment

    def object(self, name: str, *, required: bool = True) -> Fields | None:
        """A nested object, read with the same rules; its problems join this record's."""
        value = self._typed(name, dict, "an object", required=required)
        return None if value is None else Fields(value, self.problems, parent=self, name=name)

    def storable(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        """A free-form object stored as jsonb: any content, except what PostgreSQL refuses
        (a NUL character in a string or a name)."""
        nested = self.object(name, required=required)
        if nested is None:
            return None
        for path, value in _strings(nested.doc, self.path(name)):
            if "\x00" in value:
                self.problems.append(f"{path}: holds a NUL character, which jsonb cannot store")
                break
        return dict(nested.doc)


def _column(bounds: tuple[int, int]) -> str:
    names = {BIGINT: "bigint", INTEGER: "integer"}
    return names.get(bounds, f"{bounds[0]}..{bounds[1]}")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield _child(where, key), key
                stack.append((_child(where, key), child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{n}]", child) for n, child in enumerate(item))
        elif isinstance(item, str):
            yield where, item
