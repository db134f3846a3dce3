"""Sealing (accounts/sealing.py): values open only with a key of the keyring, for the row they
were sealed for, unaltered; the first key seals, every key opens."""

from __future__ import annotations

import pytest

from chat4all_workers.accounts.sealing import Keyring, account_aad, app_aad, new_key_line
from chat4all_workers.errors import UnsealError

TOKEN = "EAAG-token-of-acme-0123456789"
ACME = account_aad("whatsapp", "acme")


def keyring(*ids: str) -> Keyring:
    return Keyring.parse(",".join(new_key_line(key_id) for key_id in ids))


def test_sealing_round_trip_gives_the_plaintext_back() -> None:
    ring = keyring("k1")

    sealed = ring.seal(TOKEN, aad=ACME)

    assert ring.open(sealed, aad=ACME, ref="whatsapp/acme") == TOKEN
    assert TOKEN.encode() not in sealed
    assert sealed.startswith(b"k1:")


def test_sealing_twice_gives_different_values() -> None:
    ring = keyring("k1")

    assert ring.seal(TOKEN, aad=ACME) != ring.seal(TOKEN, aad=ACME)


def test_sealing_refuses_a_key_it_does_not_hold_naming_the_row() -> None:
    sealed = keyring("k1").seal(TOKEN, aad=ACME)

    with pytest.raises(UnsealError) as error:
        keyring("k2").open(sealed, aad=ACME, ref="whatsapp/acme")

    assert error.value.ref == "whatsapp/acme"
    assert "sealed with key 'k1'" in str(error.value)
    assert TOKEN not in str(error.value)


def test_sealing_refuses_another_key_of_the_same_id() -> None:
    sealed = keyring("k1").seal(TOKEN, aad=ACME)

    with pytest.raises(UnsealError, match="does not open with key 'k1'"):
        keyring("k1").open(sealed, aad=ACME, ref="whatsapp/acme")


def test_sealing_refuses_a_value_copied_from_another_row() -> None:
    ring = keyring("k1")
    sealed = ring.seal(TOKEN, aad=ACME)

    with pytest.raises(UnsealError, match="whatsapp/other: does not open"):
        ring.open(sealed, aad=account_aad("whatsapp", "other"), ref="whatsapp/other")


def test_sealing_keeps_an_apps_secret_and_verify_token_apart() -> None:
    ring = keyring("k1")
    sealed = ring.seal("app-secret", aad=app_aad("123", "secret"))

    with pytest.raises(UnsealError, match="does not open"):
        ring.open(sealed, aad=app_aad("123", "verify_token"), ref="app/123")


@pytest.mark.parametrize("position", [3, 20, -1])
def test_sealing_refuses_a_tampered_value(position: int) -> None:
    ring = keyring("k1")
    sealed = bytearray(ring.seal(TOKEN, aad=ACME))
    sealed[position] ^= 0x01

    with pytest.raises(UnsealError, match="whatsapp/acme: does not open"):
        ring.open(bytes(sealed), aad=ACME, ref="whatsapp/acme")


@pytest.mark.parametrize("stored", [b"", b"k1", b"k1:short", b"\xff\xfe:" + bytes(40)])
def test_sealing_refuses_what_is_not_a_sealed_value(stored: bytes) -> None:
    with pytest.raises(UnsealError, match="not a sealed value"):
        keyring("k1").open(stored, aad=ACME, ref="whatsapp/acme")


def test_sealing_rotation_opens_old_values_and_seals_with_the_new_key() -> None:
    old_line, new_line = new_key_line("k1"), new_key_line("k2")
    before = Keyring.parse(old_line).seal(TOKEN, aad=ACME)

    rotated = Keyring.parse(f"{new_line},{old_line}")
    after = rotated.seal(TOKEN, aad=ACME)

    assert rotated.open(before, aad=ACME, ref="whatsapp/acme") == TOKEN
    assert after.startswith(b"k2:")
    assert Keyring.parse(new_line).open(after, aad=ACME, ref="whatsapp/acme") == TOKEN


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no key"),
        ("k1", "entry 1: expected ID:BASE64KEY"),
        ("k1:not base64!", "entry 1 (k1): the key is not base64"),
        ("k1:c2hvcnQ=", "entry 1 (k1): the key is 5 bytes, AES-256 takes 32"),
        ("bad id:AAAA", "entry 1: expected ID:BASE64KEY"),
    ],
)
def test_sealing_keyring_refuses_a_bad_key_list_without_quoting_it(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("(", r"\(").replace(")", r"\)")):
        Keyring.parse(text)


def test_sealing_keyring_refuses_an_id_twice() -> None:
    line = new_key_line("k1")

    with pytest.raises(ValueError, match="entry 2: key id k1 appears twice"):
        Keyring.parse(f"{line},{new_key_line('k1')}")


def test_sealing_keyring_reads_one_key_a_line_as_a_mounted_file_holds_them() -> None:
    ring = Keyring.parse(f"{new_key_line('k2')}\n{new_key_line('k1')}\n")

    assert ring.key_ids == ("k2", "k1")
    assert ring.sealing_key_id == "k2"
