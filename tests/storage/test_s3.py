"""Object keys of SPEC section 6: a sanitised filename is safe, short enough for any S3, and keeps
what makes it useful (its extension)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat4all_workers.storage.s3 import sanitize_filename
from tests.e2e.hostile import FILENAMES, UNIT_EXAMPLES


@pytest.mark.parametrize(
    ("name", "extension"),
    [
        ("\u00e9" * 150 + ".pdf", ".pdf"),  # 300 bytes of two-byte characters
        ("\U0001f600" * 1000 + ".docx", ".docx"),
        ("x" * 300 + ".tar.gz", ".gz"),
        ("a." * 200 + "pdf", ".pdf"),
    ],
)
def test_sanitize_filename_keeps_the_extension_of_a_name_it_cuts(name: str, extension: str) -> None:
    cleaned = sanitize_filename(name)

    assert len(cleaned.encode()) <= 255
    assert cleaned.endswith(extension)
    assert ".." not in cleaned


def test_sanitize_filename_leaves_a_short_name_alone() -> None:
    assert sanitize_filename("relat\u00f3rio final.pdf") == "relat\u00f3rio final.pdf"


@settings(max_examples=UNIT_EXAMPLES, deadline=None)
@given(name=st.one_of(st.sampled_from(FILENAMES), st.text(max_size=400)))
def test_sanitize_filename_is_always_a_safe_key_segment(name: str) -> None:
    cleaned = sanitize_filename(name)

    assert cleaned not in ("", ".", "..")
    assert ".." not in cleaned
    assert "/" not in cleaned
    assert "\\" not in cleaned
    assert not [c for c in cleaned if unicodedata.category(c) == "Cc"]
    assert len(cleaned.encode("utf-8", errors="surrogatepass")) <= 255
