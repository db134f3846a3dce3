"""`chat4all-workers` run in-process, as an operator would type it, against a test's deployment."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from unittest import mock

from chat4all_workers.cli import main


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run_cli(args: Sequence[str], env: Mapping[str, str]) -> CliRun:
    """`main(args)` with exactly `env` as the environment, its stdout and stderr captured, and
    the root logger (which `main` configures) put back afterwards. Blocking: an async test runs
    it with `asyncio.to_thread`, its event loop being `main`'s own `asyncio.run`."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            mock.patch.dict(os.environ, dict(env), clear=True),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's usage errors
                code = int(exit_.code or 0)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return CliRun(code, out.getvalue(), err.getvalue())
