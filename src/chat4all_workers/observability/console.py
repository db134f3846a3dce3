"""Log lines for a person at a terminal, and the choice between them and the JSON lines.

    12:30:01.123 INFO    supervisor     running roles router; operations on port 8000
    12:30:01.200 WARNING status_updater update for an unknown message  message_id=0c9e...

Why a second format: the contract's JSON objects are what log pipelines parse, and they stay
exactly as they are; but on a terminal a 300-character object hides the ready line or a warning
among the others. So, like uvicorn or Kafka's own tools, a readable line on a terminal and the
structured one for machines: `observability.log_format` is `auto` (text when stderr is a
terminal, JSON otherwise: pipes, files and containers are unchanged), `text` or `json`.

A text line is the local time to the millisecond, the level, the role (`service`), the message,
then the ids of the record in hand and the line's own scalar fields as `key=value` (those the
message already shows as `key=value`, and lists or objects, are in the JSON only). Colour (the
level, dimmed keys) only on a terminal, and never when `NO_COLOR` is set (no-color.org). Text
from outside (a provider's reason, a record's bytes) may hold newlines or escape sequences: they
are escaped, so a line stays one line and nothing can drive the terminal. The handler's filters
(repeats limited, client errors demoted) apply to both formats alike.
"""

from __future__ import annotations

import logging
import re
import traceback
from datetime import datetime
from typing import Protocol

import orjson

from chat4all_workers.observability.logging import JsonFormatter, record_context

LOG_FORMATS = ("auto", "text", "json")

_LEVEL_WIDTH = 7  # WARNING
_SERVICE_WIDTH = 14  # status_updater, instagram_mock
# Fields the line shows otherwise (the columns), or that the message already says.
_NOT_SHOWN = frozenset({"service", "repeats_suppressed", "repeats_summary"})
_OUR_LOGGERS = "chat4all_workers"

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
# C0 controls but tab, DEL and C1 controls (ESC starts a terminal's escape sequences).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BARE = re.compile(r"[^\s\"'=\\]+")


class _Stream(Protocol):
    def isatty(self) -> bool: ...


class TextFormatter(logging.Formatter):
    """One readable line per record (the module's docstring has the layout)."""

    def __init__(self, default_service: str, *, colour: bool = False) -> None:
        super().__init__()
        self.default_service = default_service
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        ctx = record_context(record)
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = record.levelname
        service = str(ctx.get("service", self.default_service))
        message = _escape(record.getMessage())
        fields = dict(ctx)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        if not record.name.startswith(_OUR_LOGGERS):
            fields["logger"] = record.name
        if record.exc_info and record.exc_info[0] is not None:
            fields["error_type"] = record.exc_info[0].__name__
        if fields.get("role") == service:  # a role's own line: the column says it
            del fields["role"]
        pairs = [
            (key, _value(value))
            for key, value in fields.items()
            if key not in _NOT_SHOWN
            and value is not None
            and _scalar(value)
            and f"{key}=" not in message
        ]
        line = (
            f"{moment}.{int(record.msecs):03d} "
            f"{self._paint(f'{level:<{_LEVEL_WIDTH}}', _LEVEL_COLOURS.get(level, ''))} "
            f"{service:<{_SERVICE_WIDTH}} {message}"
        )
        if pairs:
            line += "  " + " ".join(f"{self._paint(k + '=', _DIM)}{v}" for k, v in pairs)
        if record.exc_info and record.exc_info[0] is not None:
            trace = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            line += "\n" + "\n".join("    " + _escape(t) for t in trace.splitlines())
        return line

    def _paint(self, text: str, colour: str) -> str:
        return f"{colour}{text}{_RESET}" if self.colour and colour else text


def _scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _value(value: object) -> str:
    """`value` as it reads after `key=`: bare when it is one word, else quoted like JSON."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if _BARE.fullmatch(text):
        return _escape(text)
    return _escape(orjson.dumps(text).decode())


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if m.group() != "\n" else "\\n", text)


def choose_formatter(
    log_format: str,
    *,
    stream: _Stream,
    default_service: str,
    no_color: bool,
    term: str = "",
) -> logging.Formatter:
    """The formatter for `observability.log_format` on `stream` (stderr): `auto` is text when
    the stream is a terminal, JSON otherwise. Colour needs a terminal that is not `dumb` and no
    `NO_COLOR` (the CLI reads both from the environment and passes them down)."""
    tty = _isatty(stream)
    if log_format == "json" or (log_format == "auto" and not tty):
        return JsonFormatter(default_service)
    return TextFormatter(default_service, colour=tty and not no_color and term != "dumb")


def _isatty(stream: _Stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False
