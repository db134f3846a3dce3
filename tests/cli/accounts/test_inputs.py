"""What the operator gives `accounts` (cli/accounts/inputs.py): checked before anything connects,
every problem one line that never quotes a secret."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from chat4all_workers.cli.accounts.inputs import (
    BadInputError,
    check_key,
    read_secrets,
    sealing_keyring,
)
from chat4all_workers.roles import load_settings


def test_inputs_read_secrets_takes_files_first_then_standard_input_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret").write_text("app-secret-1\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\nverify-token-2\n"))

    values = read_secrets(
        [("app secret", str(tmp_path / "secret")), ("verify token", None)], what="app 123"
    )

    assert values == ["app-secret-1", "verify-token-2"]


def test_inputs_read_secrets_refuses_standard_input_of_another_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("only-one\n"))

    with pytest.raises(BadInputError, match="holds 1 non-empty lines; expected 2") as caught:
        read_secrets([("app secret", None), ("verify token", None)], what="app 123")
    assert "only-one" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("one\ntwo\n", "holds 2 lines; expected one"),
        ("   \n", "is empty"),
        ("has space\n", "holds spaces or control characters"),
    ],
)
def test_inputs_read_secrets_refuses_a_file_that_is_not_one_secret(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "token"
    path.write_text(text)

    with pytest.raises(BadInputError, match=problem):
        read_secrets([("token", str(path))], what="whatsapp/acme")


def test_inputs_read_secrets_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"the token file .*nowhere"):
        read_secrets([("token", str(tmp_path / "nowhere"))], what="whatsapp/acme")


@pytest.mark.parametrize(
    ("key", "problem"), [("default", "the environment's"), ("Acme", "expected 1-64")]
)
def test_inputs_check_key_refuses_the_default_and_what_the_table_cannot_hold(
    key: str, problem: str
) -> None:
    with pytest.raises(BadInputError, match=problem):
        check_key("whatsapp", key)


def test_inputs_sealing_keyring_without_a_key_says_how_to_get_one() -> None:
    with pytest.raises(BadInputError, match="no accounts key to seal with"):
        sealing_keyring(load_settings({}))
