"""meta/limits.py: what each channel takes in one message, per Meta's pages."""

from __future__ import annotations

import pytest

from chat4all_workers.errors import ContentLimitError, UnsupportedMessageError
from chat4all_workers.meta.limits import (
    MB,
    check_caption,
    check_template,
    check_text,
    media_type,
)


def test_check_text_counts_whatsapp_characters_and_instagram_bytes() -> None:
    check_text("whatsapp", "é" * 4096)
    check_text("instagram", "é" * 500)  # 1,000 bytes

    with pytest.raises(ContentLimitError, match="4097 characters; WhatsApp takes at most 4096"):
        check_text("whatsapp", "a" * 4097)
    with pytest.raises(ContentLimitError, match="1001 bytes of UTF-8; Instagram takes at most"):
        check_text("instagram", "é" * 500 + "a")


@pytest.mark.parametrize(
    ("channel", "mime", "expected"),
    [
        ("whatsapp", "image/jpeg", "image"),
        ("whatsapp", "image/png", "image"),
        ("whatsapp", "video/mp4", "video"),
        ("whatsapp", "audio/ogg", "audio"),
        ("whatsapp", "audio/mpeg", "audio"),
        ("whatsapp", "application/pdf", "document"),
        ("whatsapp", "image/webp", "sticker"),
        ("instagram", "image/gif", "image"),
        ("instagram", "video/quicktime", "video"),
        ("instagram", "audio/wav", "audio"),
        ("instagram", "application/pdf", "file"),
    ],
)
def test_media_type_follows_the_mime_type(channel: str, mime: str, expected: str) -> None:
    assert media_type(channel, mime_type=mime, filename="x", size=1000).name == expected


def test_media_type_reads_mime_parameters_and_case_and_falls_back_to_the_extension() -> None:
    assert media_type("whatsapp", mime_type="Image/JPEG; q=1", filename="", size=1).name == "image"
    assert media_type("whatsapp", mime_type="", filename="a.PDF", size=1).name == "document"


def test_media_type_refuses_a_file_over_its_types_limit_naming_it() -> None:
    media_type("whatsapp", mime_type="video/mp4", filename="v.mp4", size=16 * MB)

    with pytest.raises(ContentLimitError, match=r"video is 30\.0 MB; WhatsApp takes video/mp4"):
        media_type("whatsapp", mime_type="video/mp4", filename="v.mp4", size=30 * MB)
    with pytest.raises(ContentLimitError, match=r"up to 8\.0 MB"):
        media_type("instagram", mime_type="image/png", filename="p.png", size=9 * MB)


def test_media_type_refuses_what_the_channel_does_not_take() -> None:
    with pytest.raises(ContentLimitError, match="unsupported media type 'application/zip'"):
        media_type("whatsapp", mime_type="application/zip", filename="a.zip", size=10)
    with pytest.raises(ContentLimitError, match="unsupported media type 'image/webp'"):
        media_type("instagram", mime_type="image/webp", filename="s.webp", size=10)


def test_captions_are_whatsapps_and_at_most_1024_characters() -> None:
    image = media_type("whatsapp", mime_type="image/png", filename="", size=1)
    audio = media_type("whatsapp", mime_type="audio/aac", filename="", size=1)

    check_caption("whatsapp", image, "c" * 1024)
    check_caption("whatsapp", audio, "c" * 5000)  # not sent with audio: nothing to check
    with pytest.raises(ContentLimitError, match="caption is 1025 characters"):
        check_caption("whatsapp", image, "c" * 1025)
    assert (image.caption, audio.caption) == (True, False)


def test_templates_are_whatsapps_only() -> None:
    check_template("whatsapp")

    with pytest.raises(UnsupportedMessageError, match="Instagram has no template messages"):
        check_template("instagram")
