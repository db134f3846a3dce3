"""Readable log lines on a terminal, the contract's JSON lines everywhere else."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from chat4all_workers.observability.console import TextFormatter, choose_formatter
from chat4all_workers.observability.logging import (
    JsonFormatter,
    RepeatLimitedHandler,
    log_context,
)

REPO = Path(__file__).resolve().parents[2]
TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (?P<level>\S+) +(?P<service>\S+) +(?P<rest>.*)$")
CONTRACT_FIELDS = {"timestamp", "level", "service", "trace_id", "message", "logger"}


def record(
    msg: str,
    *args: object,
    level: int = logging.INFO,
    name: str = "chat4all_workers.roles.router",
    fields: dict[str, object] | None = None,
) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    if fields is not None:
        made.fields = fields
    return made


def test_text_line_has_time_level_role_message_then_the_key_fields() -> None:
    formatter = TextFormatter("supervisor")
    line = record("dead-lettered: %s", "HTTP 400", level=logging.WARNING, fields={"attempts": 1})

    with log_context(service="router", message_id="m-1", conversation_id=42):
        text = formatter.format(line)

    match = TEXT_LINE.match(text)
    assert match is not None, text
    assert (match["level"], match["service"]) == ("WARNING", "router")
    assert match["rest"] == "dead-lettered: HTTP 400  message_id=m-1 conversation_id=42 attempts=1"


def test_text_line_leaves_out_what_its_message_already_says() -> None:
    formatter = TextFormatter("supervisor")
    fields = {"event": "progress", "processed": 5, "rate_per_s": 1.5, "roles": {"router": {}}}

    text = formatter.format(record("progress: processed=5 rate_per_s=1.5", fields=fields))

    assert text.endswith("supervisor     progress: processed=5 rate_per_s=1.5  event=progress")


def test_text_line_quotes_free_text_and_escapes_what_could_drive_the_terminal() -> None:
    formatter = TextFormatter("supervisor")
    hostile = "line one\nline two \x1b[2J"

    text = formatter.format(record("reason: %s", hostile, fields={"reason": hostile}))

    assert "\n" not in text
    assert "\x1b" not in text
    assert text.endswith(
        'reason: line one\\nline two \\x1b[2J  reason="line one\\nline two \\u001b[2J"'
    )


def test_text_line_names_a_library_logger_and_indents_its_traceback() -> None:
    formatter = TextFormatter("supervisor")
    try:
        raise ValueError("boom")
    except ValueError:
        line = logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "oops", (), None)
        line.exc_info = sys.exc_info()

    first, *trace = formatter.format(line).splitlines()

    assert first.endswith("oops  logger=aiokafka.conn error_type=ValueError")
    assert trace[0] == "    Traceback (most recent call last):"
    assert trace[-1] == "    ValueError: boom"


def test_text_line_colours_the_level_only_when_asked() -> None:
    warning = record("careful", level=logging.WARNING)

    plain = TextFormatter("supervisor").format(warning)
    coloured = TextFormatter("supervisor", colour=True).format(warning)

    assert "\x1b[" not in plain
    assert "\x1b[33mWARNING\x1b[0m" in coloured


class Stream:
    def __init__(self, *, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("log_format", "tty", "expected"),
    [
        ("auto", True, TextFormatter),
        ("auto", False, JsonFormatter),
        ("text", False, TextFormatter),
        ("json", True, JsonFormatter),
    ],
)
def test_choose_formatter_auto_is_text_on_a_terminal_and_json_otherwise(
    log_format: str, tty: bool, expected: type[logging.Formatter]
) -> None:
    formatter = choose_formatter(
        log_format, stream=Stream(tty=tty), default_service="supervisor", no_color=False
    )

    assert type(formatter) is expected


@pytest.mark.parametrize(
    ("tty", "no_color", "term", "colour"),
    [
        (True, False, "xterm", True),
        (True, True, "xterm", False),
        (True, False, "dumb", False),
        (False, False, "xterm", False),
    ],
)
def test_choose_formatter_colours_only_a_terminal_without_no_color(
    tty: bool, no_color: bool, term: str, colour: bool
) -> None:
    formatter = choose_formatter(
        "text", stream=Stream(tty=tty), default_service="supervisor", no_color=no_color, term=term
    )

    assert isinstance(formatter, TextFormatter)
    assert formatter.colour is colour


def test_repeats_are_limited_in_text_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    handler = RepeatLimitedHandler(
        service="supervisor", repeat_interval_s=30, formatter=TextFormatter("supervisor")
    )
    logger = logging.getLogger("chat4all_workers.test_console")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(5):
            logger.warning("dead-lettering %s (%s): %s", "topic-a", "invalid_record", "not JSON")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    handler.close()

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("(4 more like this in the last 0 s)")


# -- the CLI as a person and as a pipe see it ------------------------------------------------------

# A command that logs one ERROR line without any service: PostgreSQL refuses the connection.
UNREACHABLE = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "PATH": os.environ["PATH"]}


def cli_on_a_terminal(*args: str, env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run the CLI with its stderr on a pseudo-terminal; its exit code and the lines it wrote."""
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chat4all_workers", *args],
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed its end of the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    finally:
        os.close(controller)
    return code, b"".join(chunks).decode().replace("\r\n", "\n").splitlines()


def cli_piped(*args: str, env: Mapping[str, str]) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, "-m", "chat4all_workers", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stderr.splitlines()


def test_cli_logs_readable_coloured_lines_on_a_terminal() -> None:
    code, lines = cli_on_a_terminal("db", "migrate", env={**UNREACHABLE, "TERM": "xterm"})

    assert code == 1
    (line,) = lines
    assert "{" not in line
    plain = line.replace("\x1b[31m", "").replace("\x1b[0m", "")
    match = TEXT_LINE.match(plain)
    assert match is not None, line
    assert (match["level"], match["service"]) == ("ERROR", "supervisor")
    assert "\x1b[31mERROR  \x1b[0m" in line


def test_cli_logs_text_without_colour_when_no_color_is_set() -> None:
    env = {**UNREACHABLE, "TERM": "xterm", "NO_COLOR": "1"}

    code, (line,) = cli_on_a_terminal("db", "migrate", env=env)

    assert code == 1
    assert "\x1b" not in line
    assert TEXT_LINE.match(line) is not None


def test_cli_logs_the_contracts_json_lines_when_piped() -> None:
    code, (line,) = cli_piped("db", "migrate", env=UNREACHABLE)

    assert code == 1
    doc = orjson.loads(line)
    assert set(doc) == CONTRACT_FIELDS
    assert (doc["level"], doc["service"], doc["trace_id"]) == ("ERROR", "supervisor", None)


def test_cli_log_format_flag_overrides_the_environment_and_the_terminal() -> None:
    env = {**UNREACHABLE, "CHAT4ALL_OBSERVABILITY_LOG_FORMAT": "text"}

    _, (on_terminal,) = cli_on_a_terminal("--log-format", "json", "db", "migrate", env=env)
    _, (piped,) = cli_piped("db", "migrate", env=env)

    assert set(orjson.loads(on_terminal)) == CONTRACT_FIELDS
    assert TEXT_LINE.match(piped) is not None
