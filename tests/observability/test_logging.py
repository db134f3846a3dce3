"""Logs are one JSON object per line with the SPEC fields."""

from __future__ import annotations

import logging
import sys
import uuid

import orjson
import pytest

from chat4all_workers.observability.logging import (
    DemoteFilter,
    JsonFormatter,
    RepeatFilter,
    RepeatLimitedHandler,
    bind_service,
    log_context,
)
from tests.support import occurrences


def render(record_msg: str, **fields: object) -> dict[str, object]:
    formatter = JsonFormatter("supervisor")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, record_msg, (), None)
    with log_context(**fields):
        return dict(orjson.loads(formatter.format(record)))


def test_json_log_line_carries_spec_fields_and_context() -> None:
    line = render("sent", service="router", message_id="m-1", conversation_id=42)

    assert line["level"] == "WARNING"
    assert line["service"] == "router"
    assert line["message"] == "sent"
    assert line["message_id"] == "m-1"
    assert line["conversation_id"] == 42
    assert "timestamp" in line
    assert "trace_id" in line


def test_json_log_line_defaults_to_the_process_service() -> None:
    line = render("hello")

    assert line["service"] == "supervisor"
    assert "message_id" not in line


async def test_bind_service_names_the_role_for_the_task() -> None:
    bind_service("gc")

    line = render("pass done")

    assert line["service"] == "gc"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def client_record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.client", level, __file__, 1, msg, args, None)


def test_repeat_filter_passes_a_condition_once_per_interval_then_with_the_count() -> None:
    clock = Clock()
    repeats = RepeatFilter(interval_s=30, prefixes=("aiokafka",), clock=clock)
    template = "Unable connect to node with id %s: %s"

    passed = [repeats.filter(client_record(template, 1, f"refused {n}")) for n in range(500)]
    clock.now = 31
    after = client_record(template, 1, "refused again")
    again = repeats.filter(after)

    assert passed.count(True) == 1
    assert again
    assert after.getMessage() == (
        "Unable connect to node with id 1: refused again (499 more like this in the last 31 s)"
    )
    assert after.fields == {"repeats_suppressed": 499}  # type: ignore[attr-defined]


def test_repeat_filter_keys_on_logger_and_template_and_leaves_others_alone() -> None:
    repeats = RepeatFilter(interval_s=30, prefixes=("aiokafka",), clock=Clock())
    ours = logging.LogRecord("chat4all_workers.x", logging.WARNING, __file__, 1, "x %s", (1,), None)

    first = repeats.filter(client_record("Unable to update metadata from %s", [1]))
    other = repeats.filter(client_record("Heartbeat failed: %r", "gone"))
    formatted = repeats.filter(client_record("node 7 is gone"))
    formatted_again = repeats.filter(client_record("node 8 is gone"))

    assert (first, other, formatted, formatted_again) == (True, True, True, False)
    assert all(repeats.filter(ours) for _ in range(5))


def test_repeat_filter_flushes_the_count_of_a_condition_that_stopped() -> None:
    clock = Clock()
    emitted: list[logging.LogRecord] = []
    repeats = RepeatFilter(interval_s=30, prefixes=("aiokafka",), emit=emitted.append, clock=clock)
    for n in range(10):
        repeats.filter(client_record("Unable connect to node with id %s: %s", 1, n))

    clock.now = 45
    unrelated = logging.LogRecord(
        "chat4all_workers.kafka", logging.INFO, __file__, 1, "up", (), None
    )
    repeats.filter(unrelated)
    repeats.filter(unrelated)

    (summary,) = emitted
    assert summary.name == "aiokafka.client"
    assert summary.getMessage() == (
        "Unable connect to node with id 1: 9 (9 more like this in the last 45 s)"
    )


def test_repeat_filter_gives_a_condition_still_repeating_one_line_per_interval() -> None:
    clock = Clock()
    emitted: list[logging.LogRecord] = []
    repeats = RepeatFilter(interval_s=30, prefixes=("aiokafka",), emit=emitted.append, clock=clock)
    passed: list[str] = []
    for tick in range(650):  # two conditions, every 0.1 s for 65 s: an outage going on
        clock.now = tick / 10
        for template in ("Unable connect to node with id %s: %s", "Unable to update %s: %s"):
            record = client_record(template, 1, "refused")
            if repeats.filter(record):
                passed.append(record.getMessage())

    assert emitted == []  # no summary while the condition goes on
    assert len(passed) == 6  # each condition: the first line, then one per interval
    assert sum("more like this in the last 30 s" in line for line in passed) == 4


def test_demote_filter_turns_client_errors_into_warnings_but_keeps_tracebacks() -> None:
    demote = DemoteFilter(prefixes=("aiokafka",))
    plain = client_record("Unable to update metadata from %s", [1])
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        bug = logging.LogRecord(
            "aiokafka.producer.sender", logging.ERROR, __file__, 1, "Unexpected error", (),
            sys.exc_info(),
        )  # fmt: skip
    ours = logging.LogRecord("chat4all_workers.x", logging.ERROR, __file__, 1, "ours", (), None)

    for record in (plain, bug, ours):
        assert demote.filter(record)

    assert (plain.levelname, bug.levelname, ours.levelname) == ("WARNING", "ERROR", "ERROR")


def our_record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("chat4all_workers.roles.x", level, __file__, 1, msg, args, None)


def test_repeat_filter_limits_every_logger_with_one_condition_per_role_and_one_word_arguments() -> (
    None
):
    repeats = RepeatFilter(interval_s=30, clock=Clock())
    passed = []
    for channel in ("whatsapp", "instagram", "whatsapp"):
        for role in ("router", "router", "outbox"):
            with log_context(service=role):
                reason = f"HTTP 401 ({uuid.uuid4()}): token expired"  # free text: not the key
                passed.append(repeats.filter(our_record("%s paused: %s", channel, reason)))

    # whatsapp/router, whatsapp/outbox, instagram/router, instagram/outbox: each once.
    assert passed == [True, False, True, True, False, True, False, False, False]


def test_repeat_filter_never_limits_critical() -> None:
    repeats = RepeatFilter(interval_s=30, clock=Clock())

    passed = [repeats.filter(our_record("escalated", level=logging.CRITICAL)) for _ in range(3)]

    assert passed == [True, True, True]


def test_repeat_filter_counts_3000_repeats_exactly_across_lines_and_the_final_flush() -> None:
    clock = Clock()
    emitted: list[logging.LogRecord] = []
    repeats = RepeatFilter(interval_s=30, emit=emitted.append, clock=clock)
    for n in range(3000):  # 50 a second for a minute
        clock.now = n / 50
        record = our_record("status for unknown message recorded in history only")
        if repeats.filter(record):
            emitted.append(record)
    repeats.flush()

    fields = [getattr(r, "fields", {}) for r in emitted]
    assert len(emitted) == 3  # the first, one after 30 s with its count, the flush at the end
    assert [f.get("repeats_summary", False) for f in fields] == [False, False, True]
    assert sum(occurrences(f) for f in fields) == 3000
    assert emitted[-1].getMessage().endswith("more like this in the last 30 s)")


def test_repeat_filter_summary_carries_the_role_and_ids_of_what_it_summarises() -> None:
    clock = Clock()
    emitted: list[logging.LogRecord] = []
    repeats = RepeatFilter(interval_s=30, emit=emitted.append, clock=clock)
    formatter = JsonFormatter("supervisor")
    for n in range(3):
        with log_context(service="status_updater", message_id=f"m-{n}"):
            repeats.filter(our_record("status for unknown message"))

    clock.now = 40
    with log_context(service="outbox", message_id="other"):
        repeats.filter(our_record("unrelated", level=logging.INFO))

    (summary,) = [orjson.loads(formatter.format(r)) for r in emitted]
    assert (summary["service"], summary["message_id"]) == ("status_updater", "m-2")
    assert summary["repeats_suppressed"] == 2


def test_repeat_limited_handler_writes_the_summaries_owed_when_closed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = RepeatLimitedHandler(service="supervisor", repeat_interval_s=30)
    logger = logging.getLogger("chat4all_workers.test_close")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(5):
            logger.warning("dead-lettering %s (%s): %s", "topic-a", "invalid_record", "not JSON")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    handler.close()

    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line.get("repeats_suppressed") for line in lines] == [None, 4]
    assert lines[1]["repeats_summary"] is True
