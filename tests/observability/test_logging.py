"""Logs are one JSON object per line with the SPEC fields."""

from __future__ import annotations

import logging

import orjson

from chat4all_workers.observability.logging import JsonFormatter, bind_service, log_context


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
