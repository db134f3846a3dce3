"""The Send API bodies (meta/payloads.py): exactly what each channel is posted for a text and for
a file, with our callback data."""

from __future__ import annotations

import orjson

from chat4all_workers.meta.payloads import OutboundMessage, instagram_body, whatsapp_body

MESSAGE_ID = "7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11"
CALLBACK = '{"message_id":"7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11","conversation_id":42}'
TEXT = OutboundMessage(
    message_id=MESSAGE_ID, conversation_id=42, recipient="+5511999990000", kind="text", text="oi"
)
FILE = OutboundMessage(
    message_id=MESSAGE_ID,
    conversation_id=42,
    recipient="+5511999990000",
    kind="file",
    text="a caption",
    document_url="https://s3.example/files/report.pdf?X-Amz-Signature=abc",
    filename="report.pdf",
    mime_type="application/pdf",
)


def test_outbound_message_callback_data_names_our_message() -> None:
    assert TEXT.callback_data() == CALLBACK
    assert orjson.loads(TEXT.callback_data()) == {"message_id": MESSAGE_ID, "conversation_id": 42}


def test_whatsapp_body_of_a_text() -> None:
    assert whatsapp_body(TEXT) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+5511999990000",
        "biz_opaque_callback_data": CALLBACK,
        "type": "text",
        "text": {"body": "oi", "preview_url": False},
    }


def test_whatsapp_body_of_a_file_is_a_document_link() -> None:
    assert whatsapp_body(FILE) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+5511999990000",
        "biz_opaque_callback_data": CALLBACK,
        "type": "document",
        "document": {
            "link": "https://s3.example/files/report.pdf?X-Amz-Signature=abc",
            "filename": "report.pdf",
        },
    }


def test_instagram_body_of_a_text() -> None:
    message = OutboundMessage(
        message_id=MESSAGE_ID, conversation_id=42, recipient="178", kind="text", text="oi"
    )

    assert instagram_body(message) == {
        "recipient": {"id": "178"},
        "message": {"text": "oi", "metadata": CALLBACK},
    }


def test_instagram_body_of_a_file_is_an_attachment_by_url() -> None:
    assert instagram_body(FILE) == {
        "recipient": {"id": "+5511999990000"},
        "message": {
            "attachment": {
                "type": "file",
                "payload": {"url": "https://s3.example/files/report.pdf?X-Amz-Signature=abc"},
            },
            "metadata": CALLBACK,
        },
    }
