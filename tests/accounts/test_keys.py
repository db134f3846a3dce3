"""Where the accounts keyring comes from (accounts/keys.py): the setting, or the file it names,
read when asked; every problem a configuration error naming the setting, never the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat4all_workers.accounts.keys import load_keyring
from chat4all_workers.accounts.sealing import new_key_line
from chat4all_workers.errors import ConfigError
from chat4all_workers.roles import load_settings


def test_keys_none_without_a_key_or_a_file() -> None:
    assert load_keyring(load_settings({})) is None


def test_keys_from_the_setting_first_sealing() -> None:
    settings = load_settings({"ACCOUNTS_KEY": f"{new_key_line('k2')},{new_key_line('k1')}"})

    keyring = load_keyring(settings)

    assert keyring is not None
    assert (keyring.sealing_key_id, keyring.key_ids) == ("k2", ("k2", "k1"))


def test_keys_from_a_mounted_file_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "accounts-key"
    path.write_text(f"{new_key_line('k2')}\n{new_key_line('k1')}\n")

    keyring = load_keyring(load_settings({"ACCOUNTS_KEY_FILE": str(path)}))

    assert keyring is not None
    assert keyring.key_ids == ("k2", "k1")


def test_keys_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "nowhere"
    settings = load_settings({"ACCOUNTS_KEY_FILE": str(path)})

    with pytest.raises(ConfigError) as error:
        load_keyring(settings)

    assert str(error.value) == (
        f"accounts.key_file (env ACCOUNTS_KEY_FILE): cannot read {path}: No such file or directory"
    )


def test_keys_a_file_holding_a_bad_key_names_the_setting_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "accounts-key"
    path.write_text("k1:c2VjcmV0LWJ1dC1zaG9ydA==\n")

    with pytest.raises(ConfigError) as error:
        load_keyring(load_settings({"ACCOUNTS_KEY_FILE": str(path)}))

    assert str(error.value).startswith("accounts.key_file (env ACCOUNTS_KEY_FILE): entry 1 (k1)")
    assert "c2VjcmV0" not in str(error.value)


def test_keys_a_bad_setting_is_refused_when_loaded_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"ACCOUNTS_KEY": "k1:c2VjcmV0LWJ1dC1zaG9ydA=="})

    assert str(error.value) == (
        "accounts.key (env ACCOUNTS_KEY): entry 1 (k1): the key is 16 bytes, AES-256 takes 32 "
        "(chat4all-workers accounts new-key makes one)"
    )


def test_keys_the_setting_and_a_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set one of accounts\.key .* not both"):
        load_settings({"ACCOUNTS_KEY": new_key_line("k1"), "ACCOUNTS_KEY_FILE": str(tmp_path)})
