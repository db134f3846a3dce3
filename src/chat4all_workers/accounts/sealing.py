"""Sealing: how an account's token and an app's secrets are stored, so that a dump of the
database alone does not give them away.

The `cryptography` library's AES-256-GCM (`AESGCM`): authenticated encryption, so a value that
was altered, or sealed under another key, fails to open instead of decrypting to garbage. Every
value gets a fresh random 96-bit nonce, and associated data that binds it to its row
(`account:whatsapp/acme`, `app:<id>:secret`): a ciphertext copied onto another row does not open
there. The encryption runs here, in the process, and not in SQL: with pgcrypto the key would
travel in the query text, where the server's logs (`log_statement`, errors) and
`pg_stat_statements` can keep it.

A stored value is `<key id>:` + nonce + ciphertext (with its tag). The key id says which key of
the keyring opens it, so keys rotate without a flag day: the accounts key setting lists one or
more `ID:BASE64KEY` entries, the first seals, all open (docs/operations.md, "Rotating the
accounts key").
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chat4all_workers.config_checks import ACCOUNTS_KEY_BYTES, parse_key_list
from chat4all_workers.errors import UnsealError

_NONCE_BYTES = 12  # GCM's 96-bit nonce: random per value, never reused under one key
_TAG_BYTES = 16
_SEPARATOR = b":"


class Keyring:
    """The accounts keys, by id: `seal` with the first, `open` with whichever a value names."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a keyring holds at least one key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}
        self.sealing_key_id = keys[0][0]

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """From the setting's text (`ID:BASE64KEY,...`); ValueError never quotes a key."""
        return cls(parse_key_list(text))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def seal(self, plaintext: str, *, aad: bytes) -> bytes:
        """`plaintext` encrypted under the sealing key, bound to `aad` (the row it is for)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self.sealing_key_id].encrypt(nonce, plaintext.encode(), aad)
        return self.sealing_key_id.encode() + _SEPARATOR + nonce + sealed

    def open(self, sealed: bytes, *, aad: bytes, ref: str) -> str:
        """The plaintext of a value `seal` made for the same `aad`; UnsealError naming `ref` (the
        row) when it does not open, never a value that did not authenticate."""
        prefix, separator, body = sealed.partition(_SEPARATOR)
        if not separator or len(body) < _NONCE_BYTES + _TAG_BYTES or not prefix.isascii():
            raise UnsealError(ref, "not a sealed value")
        key_id = prefix.decode("ascii")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            held = ", ".join(self._ciphers)
            raise UnsealError(
                ref, f"sealed with key {key_id!r}, which the accounts key does not hold ({held})"
            )
        try:
            plaintext = cipher.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise UnsealError(
                ref, f"does not open with key {key_id!r}: altered, or sealed for another row"
            ) from None
        return plaintext.decode()


def account_aad(channel: str, key: str) -> bytes:
    """What an account's token is bound to: its row."""
    return f"account:{channel}/{key}".encode()


def app_aad(app_id: str, part: Literal["secret", "verify_token"]) -> bytes:
    """What an app's secret, or its verify token, is bound to: its row and its column (so the
    two cannot be swapped either)."""
    return f"app:{app_id}:{part}".encode()


def new_key_line(key_id: str) -> str:
    """A fresh key as the setting takes it: `ID:BASE64KEY` (32 random bytes)."""
    key = AESGCM.generate_key(bit_length=ACCOUNTS_KEY_BYTES * 8)
    line = f"{key_id}:{base64.b64encode(key).decode()}"
    parse_key_list(line)  # an id the setting would refuse is refused here, not at start-up
    return line
