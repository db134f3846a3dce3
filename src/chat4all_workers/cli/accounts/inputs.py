"""What the operator gives the `accounts` actions, checked before anything connects: the keys and
ids the tables take (migration 0003's rules, checked here first for a one-line answer), the
accounts key to seal with, and the secrets, read from files or standard input."""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chat4all_workers.config import Settings

if TYPE_CHECKING:
    from chat4all_workers.accounts.sealing import Keyring

KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)
KEY_RULE = "1-64 of a-z 0-9 _ . -"
PROVIDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}", re.ASCII)
PROVIDER_ID_RULE = "1-128 of A-Z a-z 0-9 _ . : -"
SECRETS_HELP = (
    "Secrets are read from the files named, else from standard input, one a line, in the order "
    "given (nothing is prompted when it is a pipe; on a terminal the input is hidden); never "
    "from the command line, never printed."
)


class BadInputError(Exception):
    """What the operator gave cannot be used: one line, exit code 2."""


def check(pattern: re.Pattern[str], value: str, name: str, rule: str) -> None:
    if not pattern.fullmatch(value):
        raise BadInputError(f"{name}: expected {rule}, got {value!r:.70}")


def check_key(channel: str, key: str) -> None:
    if key == "default":
        raise BadInputError(
            f"the default {channel} account is the environment's ([{channel}] section, "
            f"{channel.upper()}_*): the table holds the others; choose another KEY"
        )
    check(KEY, key, "KEY", f"{KEY_RULE}, starting with a letter or digit")


def sealing_keyring(settings: Settings) -> Keyring:
    from chat4all_workers.accounts.keys import NO_KEY_HINT, load_keyring

    loaded = load_keyring(settings)  # ConfigError for a bad one: exit 2 too
    if loaded is None:
        raise BadInputError(f"no accounts key to seal with: {NO_KEY_HINT}")
    return loaded


def read_secrets(sources: Sequence[tuple[str, str | None]], *, what: str) -> list[str]:
    """Each secret from its file, or (those without one, in order) from standard input, one a
    line; checked, never quoted."""
    from_stdin = [name for name, path in sources if path is None]
    lines = _stdin_lines(from_stdin, what) if from_stdin else []
    values: list[str] = []
    for name, path in sources:
        text = _read_file(name, path) if path is not None else lines.pop(0)
        values.append(_checked(name, text, "its file" if path else "standard input"))
    return values


def _stdin_lines(names: Sequence[str], what: str) -> list[str]:
    if sys.stdin is None:
        raise BadInputError(f"no standard input to read the {' and '.join(names)} from")
    if sys.stdin.isatty():
        return [getpass.getpass(f"{name} for {what} (hidden): ") for name in names]
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if len(lines) != len(names):
        wanted = " then ".join(names)
        raise BadInputError(
            f"standard input holds {len(lines)} non-empty lines; expected {len(names)}: {wanted}"
        )
    return lines


def _read_file(name: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"the {name} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"the {name} file {path} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        raise BadInputError(f"the {name} file {path} holds {len(lines)} lines; expected one")
    return text


def _checked(name: str, text: str, where: str) -> str:
    value = text.strip()
    if not value:
        raise BadInputError(f"the {name} from {where} is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise BadInputError(f"the {name} from {where} holds spaces or control characters")
    return value
