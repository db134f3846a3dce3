"""JSON logs, one object per line, with the fields of SPEC section 7.

The role (`service`) and the ids of the record in hand travel in a context variable, so a log line
written deep inside an adapter still says which role and which message it was about, without every
call passing them along.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
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


def bind_service(service: str) -> None:
    """Name the role for the rest of the current task (a task copies its context when created)."""
    _context.set({**_context.get(), "service": service})


class JsonFormatter(logging.Formatter):
    def __init__(self, default_service: str) -> None:
        super().__init__()
        self.default_service = default_service

    def format(self, record: logging.LogRecord) -> str:
        ctx = _context.get()
        span = trace.get_current_span().get_span_context()
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


def configure_logging(*, level: str, service: str) -> None:
    """Send every logger to stderr as JSON lines. Called once, by the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO about every (re)connection; keep their warnings only.
    for noisy in ("aiokafka", "kafka", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
