"""Where the accounts keyring comes from: `accounts.key` (ACCOUNTS_KEY), or the file
`accounts.key_file` names (ACCOUNTS_KEY_FILE, a mounted secret).

The file is read when something needs the keys (the directory as it opens, a CLI command that
seals), once, before the process serves: never by a process that has no use for it (`gc`,
`config show`), and never on the event loop afterwards. A problem is a ConfigError naming the
setting and where it came from (exit code 2), and never quotes a key.
"""

from __future__ import annotations

from pathlib import Path

from chat4all_workers.accounts.sealing import Keyring
from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError

NO_KEY_HINT = (
    "set ACCOUNTS_KEY or ACCOUNTS_KEY_FILE (`chat4all-workers accounts new-key` makes a key)"
)


def load_keyring(settings: Settings) -> Keyring | None:
    """The keyring the settings name, or None when neither setting is set."""
    accounts = settings.accounts
    if accounts.key:
        source = settings.sources.get("accounts.key", "default")
        return _parsed(accounts.key.get(), "accounts.key", source)
    if not accounts.key_file:
        return None
    source = settings.sources.get("accounts.key_file", "default")
    try:
        text = Path(accounts.key_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            "accounts.key_file", source, f"cannot read {accounts.key_file}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "accounts.key_file", source, f"{accounts.key_file} is not UTF-8 text"
        ) from None
    return _parsed(text, "accounts.key_file", source)


def _parsed(text: str, key: str, source: str) -> Keyring:
    try:
        return Keyring.parse(text)
    except ValueError as exc:
        raise ConfigError(key, source, str(exc)) from None
