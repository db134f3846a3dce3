"""Secrets, and how one setting's value is read and checked (config.py's loader uses these).

A value comes as text (the environment, a CLI flag) or typed (TOML); `parse_text` and
`parse_toml` turn it into the field's type, `validate` holds it to the field's rules
(`metadata`: `min`, `max`, `choices`, `check`, `check_key`). Problems are `ConfigError`s naming
the key and where the value came from, and never quote a secret.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from chat4all_workers import config_checks
from chat4all_workers.errors import ConfigError


class Secret:
    """A credential; `repr`/`str` hide it, so it cannot leak into logs, `config show` or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def masked(self) -> str:
        """What `config show` prints: a URL without its password (`postgresql://chat4all:***@
        db:5432/chat4all`, so the host stays visible), any other secret as `***`, and an empty
        one as empty."""
        if not self._value:
            return ""
        return config_checks.masked_url(self._value) or "***"


def validate(key: str, source: str, rules: Mapping[str, Any], value: Any) -> None:
    """The field's rules (`metadata`) hold for `value`, or ConfigError names the key (a table
    entry as `key.name`) and never quotes a secret."""
    if isinstance(value, dict):
        check_key = rules.get("check_key")
        for name, item in value.items():
            if check_key is not None and (problem := check_key(name)):
                raise ConfigError(f"{key}.{shown_key(name)}", source, f"the name is {problem}")
            validate(f"{key}.{shown_key(name)}", source, rules, item)
        return
    problem = _problem(rules, value)
    if problem:
        raise ConfigError(key, source, problem)


def _problem(rules: Mapping[str, Any], value: Any) -> str | None:
    choices = rules.get("choices")
    if choices and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {_shown(value)}"
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _out_of_bounds(rules, value)
    check = rules.get("check")
    if check is None:
        return None
    if isinstance(value, Secret):
        problem: str | None = check(value.get())  # the URL checks never quote what they read
        return problem
    if isinstance(value, str):
        problem = check(value)
        return f"{problem}: {_shown(value)}" if problem else None
    return None


def _out_of_bounds(rules: Mapping[str, Any], value: float) -> str | None:
    """Numbers are positive unless the field says otherwise (`min`, `max`): a zero or negative
    size, count, timeout or interval is nonsense almost everywhere, so the few settings where 0
    means something (a port chosen by the OS, no delay) say so."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low = rules.get("min")
    high = rules.get("max", _INT_MAX if isinstance(value, int) else _FLOAT_MAX)
    if low is None and value <= 0:
        return f"must be greater than 0, got {value}"
    if low is not None and value < low:
        return f"must be at least {low}, got {value}"
    if value > high:
        return f"must be at most {high}, got {value}"
    return None


# Integers end up in int32 protocol fields (Kafka timeouts, counts) unless a field says otherwise.
_INT_MAX = 2**31 - 1
_FLOAT_MAX = 1e9
_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """A value quoted for an error message: on one line, and cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"


def shown_key(key: Any) -> str:
    text = str(key)
    printable = text.isprintable() and len(text) <= _SHOWN_CHARS and "." not in text
    return text if printable else _shown(text)


def parse_text(key: str, source: str, raw: str, kind: Any) -> Any:
    """Parse an environment or CLI string into the field's type."""
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true or false, got {_shown(raw)}")
        if kind is int:
            return _int(raw)
        if kind is float:
            return _float(raw)
        if kind is Secret:
            return Secret(raw)
        if kind is str:
            return raw
        origin = typing.get_origin(kind)
        if origin is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if origin is dict:
            _, value_kind = typing.get_args(kind)
            pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected comma-separated name=value pairs")
            return {k.strip(): parse_text(key, source, v, value_kind) for k, v in pairs}
    except ValueError as exc:
        raise ConfigError(key, source, str(exc)) from None
    raise ConfigError(key, source, f"unsupported setting type {kind!r}")


def _int(raw: str) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,30}", text, re.ASCII):
        raise ValueError(f"expected an integer, got {_shown(raw)}")
    return int(text)


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {_shown(raw)}") from None


def parse_toml(key: str, source: str, value: Any, kind: Any) -> Any:
    """Check a TOML value against the field's type (TOML already typed it)."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, bool, str) and type(value) is kind:
        return value
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    origin = typing.get_origin(kind)
    if origin is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if origin is tuple and isinstance(value, str):
        return parse_text(key, source, value, kind)
    if origin is dict and isinstance(value, dict):
        _, value_kind = typing.get_args(kind)
        return {
            str(k): parse_toml(f"{key}.{shown_key(k)}", source, v, value_kind)
            for k, v in value.items()
        }
    # A secret given with the wrong type is still a secret: say what type it had, never what.
    got = _toml_type(value) if kind is Secret else f"{_toml_type(value)} {_shown(value)}"
    raise ConfigError(key, source, f"expected {_type_name(kind)}, got {got}")


def _toml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else "date/time")


def _type_name(kind: Any) -> str:
    if isinstance(kind, type):
        names = {str: "string", Secret: "string", int: "integer", float: "number", bool: "boolean"}
        return names.get(kind, kind.__name__)
    if isinstance(kind, types.GenericAlias):
        return "array of strings" if typing.get_origin(kind) is tuple else "table"
    return str(kind)


def printable(value: Any) -> str:
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def json_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, tuple):
        return list(value)
    return value
