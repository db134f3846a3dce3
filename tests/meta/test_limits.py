"""What a channel takes in one message (meta/limits.py): WhatsApp counts characters, Instagram
bytes of UTF-8; a file's caption is not sent, so it is not checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from chat4all_workers.errors import ContentLimitError
from chat4all_workers.meta.limits import check_instagram, check_whatsapp
from chat4all_workers.meta.payloads import OutboundMessage

TEXT = OutboundMessage(
    message_id="7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11",
    conversation_id=42,
    recipient="+5511999990000",
    kind="text",
    text="hello",
)


def text(content: str) -> OutboundMessage:
    return dataclasses.replace(TEXT, text=content)


def file_with_caption(caption: str) -> OutboundMessage:
    return dataclasses.replace(TEXT, kind="file", text=caption, document_url="https://s3/x")


def test_check_whatsapp_takes_4096_characters_whatever_their_bytes() -> None:
    check_whatsapp(text("é" * 4096))  # 8,192 bytes, 4,096 characters


def test_check_whatsapp_refuses_a_text_over_4096_characters_naming_the_limit() -> None:
    with pytest.raises(ContentLimitError) as error:
        check_whatsapp(text("a" * 4097))

    assert str(error.value) == "text is 4097 characters; WhatsApp takes at most 4096"
    assert error.value.error_type == "content_limit"


def test_check_instagram_takes_1000_bytes_of_utf8() -> None:
    check_instagram(text("é" * 500))  # 1,000 bytes


def test_check_instagram_refuses_a_text_over_1000_bytes_naming_the_limit() -> None:
    with pytest.raises(ContentLimitError) as error:
        check_instagram(text("é" * 500 + "a"))  # 501 characters, 1,001 bytes

    assert str(error.value) == "text is 1001 bytes of UTF-8; Instagram takes at most 1000"


@pytest.mark.parametrize("check", [check_whatsapp, check_instagram])
def test_checks_leave_a_files_caption_alone(check: Callable[[OutboundMessage], None]) -> None:
    check(file_with_caption("a" * 10_000))
