"""A send as a mock reads it, and what Meta refuses of the message itself.

The request bodies are meta/payloads.py's (what our adapters send). Refused, each with Meta's
answer: a recipient Meta cannot deliver to (here, one containing "invalid": WhatsApp 131026,
Instagram 100/2018001); a text over the channel's limit (code 100); a free-form message (text,
media) to a user whose customer service window is closed (WhatsApp HTTP 400 code 131047,
Instagram HTTP 403 code 10/2534022; Instagram's HUMAN_AGENT tag allows its longer window,
WhatsApp templates need none); a template not approved in that language (HTTP 404 code 132001)
or with another number of body parameters (HTTP 400 code 132000).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chat4all_workers.frozen import frozen
from chat4all_workers.meta.limits import INSTAGRAM_TEXT_BYTES, WHATSAPP_TEXT_CHARACTERS
from chat4all_workers.meta.payloads import HUMAN_AGENT
from chat4all_workers.meta.windows import user_key
from chat4all_workers.simulators import answers
from chat4all_workers.simulators.accounts import Windows

_WHATSAPP_MEDIA = frozenset({"image", "video", "audio", "document", "sticker"})


@frozen
class Send:
    """A send as the mock reads it."""

    recipient: str  # as the request named it
    user: str  # whose window and pair limit: the wa_id (WhatsApp), the IGSID (Instagram)
    kind: str  # text, template, or the media type
    text: str  # the text, the media link or the template's name (what /__mock__/sent lists)
    callback: str | None = None  # the callback data, echoed in the webhooks
    media_url: str | None = None
    template: dict[str, Any] | None = None
    human_agent: bool = False  # Instagram's `messaging_type: MESSAGE_TAG, tag: HUMAN_AGENT`


def parse_send(channel: str, body: Any) -> Send:
    """The send a request body asks for; ValueError, TypeError, KeyError or AttributeError
    for one Meta would answer "(#100) Invalid parameter"."""
    if channel == "whatsapp":
        if body.get("messaging_product") != "whatsapp":
            raise ValueError("messaging_product must be whatsapp")
        recipient = str(body["to"])
        kind = body.get("type")
        media_url, template = None, None
        if kind == "text":
            text = str(body["text"]["body"])
        elif kind == "template":
            template = body["template"]
            if not isinstance(template, dict):
                raise TypeError("template must be an object")
            text = str(template["name"])
            str(template["language"]["code"])  # required, as Meta requires it
        elif kind in _WHATSAPP_MEDIA:
            media_url = text = str(body[kind]["link"])
        else:
            raise ValueError(f"unsupported message type {kind!r}")
        send = Send(
            recipient,
            user_key(channel, recipient),
            kind,
            text,
            media_url=media_url,
            template=template,
        )
        raw_callback = body.get("biz_opaque_callback_data")
    else:
        recipient = str(body["recipient"]["id"])
        message = body["message"]
        if message.get("text"):
            kind, text, media_url = "text", str(message["text"]), None
        else:
            attachment = message["attachment"]
            kind, text = str(attachment["type"]), str(attachment["payload"]["url"])
            media_url = text
        tagged = body.get("messaging_type") == "MESSAGE_TAG" and body.get("tag") == HUMAN_AGENT
        send = Send(recipient, recipient, kind, text, media_url=media_url, human_agent=tagged)
        raw_callback = message.get("metadata")
    if raw_callback is not None and not isinstance(raw_callback, str):
        raise TypeError("the callback data must be a string")
    return dataclasses.replace(send, callback=raw_callback)


def content_refusal(channel: str, send: Send) -> web.Response | None:
    """What Meta refuses for this message alone: an unknown recipient, a text too long."""
    whatsapp = channel == "whatsapp"
    if "invalid" in send.recipient:
        if whatsapp:
            return answers.error(
                400, f"(#131026) Message undeliverable to {send.recipient}", 131026
            )
        return answers.error(400, "(#100) No matching user found", 100, 2018001)
    if send.kind != "text":
        return None
    if whatsapp and len(send.text) > WHATSAPP_TEXT_CHARACTERS:
        limit = f"at most {WHATSAPP_TEXT_CHARACTERS} characters"
        return answers.error(400, f"(#100) Param text['body'] must be {limit} long", 100)
    if not whatsapp and len(send.text.encode("utf-8")) > INSTAGRAM_TEXT_BYTES:
        return answers.error(400, f"(#100) Text must be {INSTAGRAM_TEXT_BYTES} bytes or fewer", 100)
    return None


def window_refusal(
    channel: str,
    send: Send,
    windows: Windows,
    *,
    now_s: float,
    window_s: float,
    human_agent_window_s: float,
) -> web.Response | None:
    """A free-form message to a user whose customer service window is closed."""
    if send.kind == "template":
        return None
    if send.human_agent:
        window_s = max(window_s, human_agent_window_s)
    age_s = windows.age_s(send.user, now_s)
    if age_s is not None and age_s <= window_s:
        return None
    if channel == "whatsapp":
        return answers.error(
            400, "(#131047) Re-engagement message", 131047,
            details="More than 24 hours have passed since the recipient last replied to the "
            "sender number.",
        )  # fmt: skip
    return answers.error(403, "(#10) This message is sent outside of allowed window", 10, 2534022)


def template_refusal(send: Send, approved: Mapping[tuple[str, str], int]) -> web.Response | None:
    """A template not `approved` ((name, language) -> body parameters) in that language, or
    with another number of body parameters."""
    if send.template is None:
        return None
    name, language = send.text, str(send.template["language"]["code"])
    expected = approved.get((name, language))
    if expected is None:
        return answers.error(
            404, "(#132001) Template name does not exist in the translation", 132001,
            details=f"template name ({name}) does not exist in {language}",
        )  # fmt: skip
    components = send.template.get("components") or []
    given = sum(
        len(parameters)
        for component in components
        if isinstance(component, dict) and str(component.get("type")).lower() == "body"
        if isinstance(parameters := component.get("parameters"), list)
    )
    if given != expected:
        return answers.error(
            400, "(#132000) Number of parameters does not match the expected number of params",
            132000,
            details=f"body: number of localizable_params ({given}) does not match the expected "
            f"number of params ({expected})",
        )  # fmt: skip
    return None
