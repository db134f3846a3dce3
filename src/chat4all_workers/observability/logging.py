"""JSON logs, one object per line, with the fields of SPEC section 7.

The role (`service`) and the ids of the record in hand travel in a context variable, so a log line
written deep inside an adapter still says which role and which message it was about, without every
call passing them along.

Nothing may flood the log. aiokafka logs every failed reconnect, metadata refresh and
heartbeat at ERROR, hundreds of lines a second while a broker is away; those are retried by the
client itself and judged by our own code (the breaker, the engine), so `configure_logging`
demotes aiokafka's ERRORs without a traceback to WARNING (`DemoteFilter`). And a condition that
repeats per record (a status of a message without a `messages` row, a dead-lettered record, a
retried one) would write a line per record: 18,000 lines for 3,000 messages. So every WARNING
and ERROR (of any logger, any role) passes once per `log_repeat_interval_s` per condition, the
next one saying how many it stood for, and a condition that stopped gets a summary line
(`RepeatFilter`). CRITICAL always passes.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039

# The ids a line may carry (SPEC section 7, and the upload of a file role): set them with
# `log_context` around the work on one record, so every line inside names it.
CONTEXT_FIELDS = ("message_id", "conversation_id", "user_id", "upload_id")


class log_context:  # lower case: used like the function it replaced, `with log_context(...)`
    """Add fields (e.g. service=, message_id=) to every log line written inside the block.

    A class, not a generator context manager: it wraps every record the router handles, and
    this costs a third as much.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._token: contextvars.Token[dict[str, Any]] | None = None

    def __enter__(self) -> None:
        fields = {k: v for k, v in self._fields.items() if v is not None}
        self._token = _context.set({**_context.get(), **fields})

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _context.reset(self._token)


def record_context(record: logging.LogRecord) -> Mapping[str, Any]:
    """The fields a record is written with: its own (a summary of repeats carries the context of
    the record it summarises), else the current context."""
    ctx: Mapping[str, Any] = getattr(record, "log_context", None) or _context.get()
    return ctx


def bind_service(service: str) -> None:
    """Name the role for the rest of the current task (a task copies its context when created)."""
    _context.set({**_context.get(), "service": service})


class JsonFormatter(logging.Formatter):
    def __init__(self, default_service: str) -> None:
        super().__init__()
        self.default_service = default_service

    def format(self, record: logging.LogRecord) -> str:
        # A summary of repeats (RepeatFilter) is written from another record's context: it
        # carries the context and trace of the record it summarises.
        ctx = record_context(record)
        span = getattr(record, "span_context", None) or trace.get_current_span().get_span_context()
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "service": ctx.get("service", self.default_service),
            "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in ctx.items():
            if key != "service":
                doc[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info and record.exc_info[0] is not None:
            doc["error_type"] = record.exc_info[0].__name__
            doc["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(doc, default=str).decode()


# Variable parts a message template may still contain (f-strings, pre-formatted text): numbers,
# hex ids and UUIDs, addresses. What is left names the condition.
_VARIABLE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|0x[0-9a-f]+|\d+")
_WORD_MAX = 40


def message_template(record: logging.LogRecord) -> str:
    """The message a record reports: its format string with any variable parts blanked."""
    return _VARIABLE.sub("#", str(record.msg))


def condition_of(record: logging.LogRecord) -> tuple[str, ...]:
    """What a record is about, for telling repeats apart: the service (role) it was written
    for, its logger, its message template, and its one-word arguments (a channel, a role, a
    status, an error type: `whatsapp paused` is not `instagram paused`), numbers and ids
    blanked. Free text (a reason, an exception) and numbers are not part of it, so a stream of
    dead-lettered records is one condition per topic and error type, whatever their reasons."""
    args = record.args if isinstance(record.args, tuple) else ()
    words = tuple(
        _VARIABLE.sub("#", arg)
        for arg in args
        if isinstance(arg, str) and len(arg) <= _WORD_MAX and arg and not _has_space(arg)
    )
    service = str(_context.get().get("service", ""))
    return (service, record.name, message_template(record), *words)


def _has_space(text: str) -> bool:
    return any(c.isspace() for c in text)


@dataclass
class _Condition:
    passed_at: float
    dropped: int = 0
    last_seen: float = 0.0
    last: logging.LogRecord | None = None  # the latest dropped record, for the summary
    last_context: dict[str, Any] | None = None  # and where it was written
    last_span: trace.SpanContext | None = None


class RepeatFilter(logging.Filter):
    """Let a condition through once per `interval_s` (`condition_of`: role, logger, template,
    one-word arguments).

    The first record of a condition passes; repeats within the interval are dropped and
    counted. The first repeat after the interval passes with " (N more like this in the last
    S s)" appended and a `repeats_suppressed` field. A condition that stopped repeating (the
    outage is over) is not left uncounted: given `emit` (the handler's `handle`), once the
    interval is over and the condition has been quiet for `quiet_s` (a sixth of the interval
    by default), the next record of any kind that reaches the filter first flushes a summary
    line for it: its latest repeat, with the count; `flush()` (at exit: `RepeatLimitedHandler`)
    writes every summary still owed. Only records of loggers under `prefixes` (all, when empty)
    from `min_level` to `max_level` are limited. The clock is injectable.
    """

    def __init__(
        self,
        *,
        interval_s: float,
        prefixes: tuple[str, ...] = (),
        min_level: int = logging.WARNING,
        max_level: int = logging.ERROR,
        emit: Callable[[logging.LogRecord], object] | None = None,
        quiet_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_conditions: int = 1000,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._prefixes = prefixes
        self._min_level = min_level
        self._max_level = max_level
        self._emit = emit
        self._quiet_s = interval_s / 6 if quiet_s is None else quiet_s
        self._clock = clock
        self._max_conditions = max_conditions
        self._conditions: dict[tuple[str, ...], _Condition] = {}
        self._lock = threading.Lock()
        self._flushing = False
        self._next_flush_at = math.inf  # no condition with repeats may be flushed before this

    def _applies(self, record: logging.LogRecord) -> bool:
        if not self._min_level <= record.levelno <= self._max_level:
            return False
        return not self._prefixes or record.name.startswith(self._prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval_s <= 0 or self._flushing:
            return True
        now = self._clock()
        key = condition_of(record) if self._applies(record) else None
        passes = True
        if key is not None:
            with self._lock:
                condition = self._conditions.get(key)
                if condition is not None and now - condition.passed_at < self.interval_s:
                    condition.dropped += 1
                    condition.last = record
                    condition.last_context = _context.get()
                    condition.last_span = trace.get_current_span().get_span_context()
                    condition.last_seen = now
                    self._next_flush_at = min(self._next_flush_at, self._flushable_at(condition))
                    passes = False
                else:
                    if len(self._conditions) >= self._max_conditions:
                        self._conditions.clear()  # a flood of distinct messages: stay bounded
                    self._conditions[key] = _Condition(passed_at=now)
            if passes and condition is not None and condition.dropped:
                _mark_repeats(record, condition.dropped, now - condition.passed_at)
        self._flush(now)
        return passes

    def _flushable_at(self, condition: _Condition) -> float:
        return max(condition.passed_at + self.interval_s, condition.last_seen + self._quiet_s)

    def flush(self) -> None:
        """A summary for every condition with repeats not yet told (the process is exiting)."""
        self._flush(self._clock(), everything=True)

    def _flush(self, now: float, *, everything: bool = False) -> None:
        """Summaries of conditions that stopped repeating."""
        if self._emit is None or (now < self._next_flush_at and not everything):
            return
        with self._lock:
            stale = [
                (key, c)
                for key, c in self._conditions.items()
                if c.dropped and c.last is not None and (everything or now >= self._flushable_at(c))
            ]
            for key, _ in stale:
                del self._conditions[key]
            self._next_flush_at = min(
                (self._flushable_at(c) for c in self._conditions.values() if c.dropped),
                default=math.inf,
            )
        for _, condition in stale:
            assert condition.last is not None
            summary = logging.makeLogRecord(condition.last.__dict__)
            summary.created = time.time()  # written now, in the log's order
            summary.log_context = condition.last_context
            summary.span_context = condition.last_span
            _mark_repeats(summary, condition.dropped, now - condition.passed_at, summary=True)
            self._flushing = True
            try:
                self._emit(summary)
            finally:
                self._flushing = False


def _mark_repeats(
    record: logging.LogRecord, dropped: int, since_s: float, *, summary: bool = False
) -> None:
    """A line that passes after repeats stands for itself and `dropped` more; a summary
    (`repeats_summary`) repeats the latest of them and stands for the `dropped` only."""
    message = record.getMessage()
    record.msg = f"{message} ({dropped} more like this in the last {since_s:.0f} s)"
    record.args = None
    fields = getattr(record, "fields", None)
    extra = fields if isinstance(fields, dict) else {}
    record.fields = {**extra, "repeats_suppressed": dropped} | (
        {"repeats_summary": True} if summary else {}
    )


class DemoteFilter(logging.Filter):
    """ERROR records of loggers under `prefixes` become WARNING unless they carry a traceback
    (`log.exception`: a bug in the library, or in a callback of ours, stays an ERROR)."""

    def __init__(self, *, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and not record.exc_info
            and record.name.startswith(self._prefixes)
        ):
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


class RepeatLimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The process's stderr handler: JSON lines (or `formatter`'s), client errors demoted,
    repeats limited; on close (`logging.shutdown`, at exit) the summaries still owed are
    written first."""

    def __init__(
        self,
        *,
        service: str,
        repeat_interval_s: float,
        formatter: logging.Formatter | None = None,
    ) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(formatter or JsonFormatter(service))
        self.addFilter(DemoteFilter(prefixes=_CLIENT_LOGGERS))
        self.repeats = RepeatFilter(interval_s=repeat_interval_s, emit=self.handle)
        self.addFilter(self.repeats)

    def close(self) -> None:
        self.repeats.flush()
        super().close()


def flush_repeats() -> None:
    """Write the summaries still owed by the process's handler (before the drain summary)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RepeatLimitedHandler):
            handler.repeats.flush()


_CLIENT_LOGGERS = ("aiokafka", "kafka")


def configure_logging(
    *,
    level: str,
    service: str,
    repeat_interval_s: float = 30.0,
    formatter: logging.Formatter | None = None,
) -> None:
    """Send every logger to stderr, as JSON lines unless `formatter` says otherwise
    (observability/console.py: text for a person at a terminal). Called once, by the CLI."""
    handler = RepeatLimitedHandler(
        service=service, repeat_interval_s=repeat_interval_s, formatter=formatter
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO about every (re)connection; keep their warnings only.
    for noisy in (*_CLIENT_LOGGERS, "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
