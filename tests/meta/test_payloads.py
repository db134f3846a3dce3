"""The Send API bodies (meta/payloads.py): exactly what each channel is posted for a text, a
media by type, a template and a human agent's tagged message, with our callback data."""

from __future__ import annotations

import dataclasses

import orjson

from chat4all_workers.meta.payloads import (
    HUMAN_AGENT,
    OutboundMessage,
    instagram_body,
    whatsapp_body,
)

MESSAGE_ID = "7b0c0b8e-4f4b-4f0e-9d8e-2a9f0f6c1a11"
ORIGIN = "message_processing:3:120"
CALLBACK = orjson.dumps(
    {"message_id": MESSAGE_ID, "conversation_id": 42, "origin": ORIGIN}
).decode()
LINK = "https://s3.example/files/report.pdf?X-Amz-Signature=abc"
TEXT = OutboundMessage(MESSAGE_ID, 42, "+5511999990000", "text", text="oi", origin=ORIGIN)
DOCUMENT = dataclasses.replace(
    TEXT,
    kind="media",
    text="a caption",
    media_url=LINK,
    media_type="document",
    filename="report.pdf",
    caption=True,
)
HEAD = {
    "messaging_product": "whatsapp",
    "recipient_type": "individual",
    "to": "+5511999990000",
    "biz_opaque_callback_data": CALLBACK,
}


def test_outbound_message_callback_data_names_our_message_and_the_record_sent() -> None:
    assert orjson.loads(TEXT.callback_data()) == {
        "message_id": MESSAGE_ID,
        "conversation_id": 42,
        "origin": ORIGIN,
    }


def test_whatsapp_body_of_a_text() -> None:
    assert whatsapp_body(TEXT) == {
        **HEAD,
        "type": "text",
        "text": {"body": "oi", "preview_url": False},
    }


def test_whatsapp_body_of_a_document_has_its_caption_and_filename() -> None:
    assert whatsapp_body(DOCUMENT) == {
        **HEAD,
        "type": "document",
        "document": {"link": LINK, "caption": "a caption", "filename": "report.pdf"},
    }


def test_whatsapp_body_of_an_image_has_a_caption_and_no_filename() -> None:
    image = dataclasses.replace(DOCUMENT, media_type="image", filename="")

    assert whatsapp_body(image) == {
        **HEAD,
        "type": "image",
        "image": {"link": LINK, "caption": "a caption"},
    }


def test_whatsapp_body_of_an_audio_has_only_its_link() -> None:
    audio = dataclasses.replace(DOCUMENT, media_type="audio", text="", caption=False, filename="")

    assert whatsapp_body(audio) == {**HEAD, "type": "audio", "audio": {"link": LINK}}


def test_whatsapp_body_of_a_template_is_metas_template_object() -> None:
    template = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "42"}]}],
    }
    message = dataclasses.replace(TEXT, kind="template", text="", template=template)

    assert whatsapp_body(message) == {**HEAD, "type": "template", "template": template}


def test_instagram_body_of_a_text() -> None:
    message = dataclasses.replace(TEXT, recipient="178")

    assert instagram_body(message) == {
        "recipient": {"id": "178"},
        "message": {"text": "oi", "metadata": CALLBACK},
    }


def test_instagram_body_of_a_media_is_an_attachment_of_its_type_by_url() -> None:
    video = dataclasses.replace(DOCUMENT, recipient="178", media_type="video", caption=False)

    assert instagram_body(video) == {
        "recipient": {"id": "178"},
        "message": {
            "attachment": {"type": "video", "payload": {"url": LINK}},
            "metadata": CALLBACK,
        },
    }


def test_instagram_body_of_a_human_agents_message_carries_the_tag() -> None:
    tagged = dataclasses.replace(TEXT, recipient="178", tag=HUMAN_AGENT)

    assert instagram_body(tagged) == {
        "recipient": {"id": "178"},
        "message": {"text": "oi", "metadata": CALLBACK},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
    }
