"""What each channel takes in one message, checked before any call (a refusal costs nothing).

Text. WhatsApp: a body of at most 4,096 characters (Cloud API messages reference, `text.body`).
Instagram: at most 1,000 bytes of UTF-8 ("Message text must be UTF-8 and be a 1000 bytes or
less", Instagram Messaging, Send a Message).

Media: a file goes out as the type its MIME type says, within that type's size, or is refused
naming the limit. One table per channel (`MEDIA`), each row from Meta's page:

- WhatsApp, "Supported media types" (developers.facebook.com/documentation/business-messaging/
  whatsapp/business-phone-numbers/media#supported-media-types) and the per-type message pages
  (.../whatsapp/messages/image-messages, ...: a caption of at most 1,024 characters on image,
  video and document; a filename on document only; audio and sticker take neither). Audio in
  OGG must be OPUS (Meta's words; not checkable from the MIME type alone).
- Instagram, "Send a Message" (developers.facebook.com/documentation/business-messaging/
  instagram-messaging/features/send-message: audio aac, m4a, wav, mp4 up to 25 MB; image png,
  jpeg, gif up to 8 MB; video mp4, ogg, avi, mov, webm up to 25 MB) and "Upload Media" (.../
  attachment-upload: a file, PDF, up to 25 MB). Instagram attachments take no caption.

A MIME type not in the channel's table is refused ("unsupported media type"): Meta would fail
the message later, by webhook (131053 "Media upload error"). Templates exist on WhatsApp only.
"""

from __future__ import annotations

from collections.abc import Mapping

from chat4all_workers.errors import ContentLimitError, UnsupportedMessageError
from chat4all_workers.frozen import frozen

WHATSAPP_TEXT_CHARACTERS = 4096
INSTAGRAM_TEXT_BYTES = 1000
WHATSAPP_CAPTION_CHARACTERS = 1024
KB, MB = 1024, 1024 * 1024
_NAMES = {"whatsapp": "WhatsApp", "instagram": "Instagram"}


def _name(channel: str) -> str:
    """The channel as a reason names it (WhatsApp, not Whatsapp)."""
    return _NAMES.get(channel, channel)


@frozen
class MediaType:
    """One kind of media a channel sends: its name in the Send API, the MIME types it takes
    (with their file extensions, for a file that came without a MIME type) and its size."""

    name: str  # WhatsApp: image, video, audio, document, sticker; Instagram: image, ...
    mime_types: Mapping[str, tuple[str, ...]]  # MIME type -> extensions
    max_bytes: int
    caption: bool = False
    filename: bool = False


WHATSAPP_MEDIA = (
    MediaType(
        "image", {"image/jpeg": ("jpg", "jpeg"), "image/png": ("png",)}, 5 * MB, caption=True
    ),
    MediaType("video", {"video/mp4": ("mp4",), "video/3gpp": ("3gp",)}, 16 * MB, caption=True),
    MediaType(
        "audio",
        {
            "audio/aac": ("aac",),
            "audio/amr": ("amr",),
            "audio/mpeg": ("mp3",),
            "audio/mp4": ("m4a",),
            "audio/ogg": ("ogg", "opus"),
        },
        16 * MB,
    ),
    MediaType(
        "document",
        {
            "text/plain": ("txt",),
            "application/pdf": ("pdf",),
            "application/vnd.ms-excel": ("xls",),
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("xlsx",),
            "application/msword": ("doc",),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ("docx",),
            "application/vnd.ms-powerpoint": ("ppt",),
            "application/vnd.openxmlformats-officedocument.presentationml.presentation": ("pptx",),
        },
        100 * MB,
        caption=True,
        filename=True,
    ),
    # Meta: animated stickers up to 500 KB, static up to 100 KB; which one a WebP file is, its
    # bytes say, not its MIME type: the larger limit is checked here.
    MediaType("sticker", {"image/webp": ("webp",)}, 500 * KB),
)

INSTAGRAM_MEDIA = (
    MediaType(
        "image",
        {"image/png": ("png",), "image/jpeg": ("jpg", "jpeg"), "image/gif": ("gif",)},
        8 * MB,
    ),
    MediaType(
        "video",
        {
            "video/mp4": ("mp4",),
            "video/ogg": ("ogv",),
            "video/x-msvideo": ("avi",),
            "video/quicktime": ("mov",),
            "video/webm": ("webm",),
        },
        25 * MB,
    ),
    MediaType(
        "audio",
        {
            "audio/aac": ("aac",),
            "audio/mp4": ("m4a",),
            "audio/x-m4a": (),
            "audio/wav": ("wav",),
            "audio/x-wav": (),
            "audio/wave": (),
        },
        25 * MB,
    ),
    MediaType("file", {"application/pdf": ("pdf",)}, 25 * MB),
)

MEDIA: Mapping[str, tuple[MediaType, ...]] = {
    "whatsapp": WHATSAPP_MEDIA,
    "instagram": INSTAGRAM_MEDIA,
}
# Instagram's Send API takes audio and video at a lower rate than text (10 calls/s against 300,
# per account: Messenger Platform rate limits, which Instagram Messaging shares).
SLOW_MEDIA: Mapping[str, frozenset[str]] = {"instagram": frozenset({"audio", "video"})}


def check_text(channel: str, text: str) -> None:
    """ContentLimitError, naming the limit, for a text the channel cannot take."""
    if channel == "whatsapp" and len(text) > WHATSAPP_TEXT_CHARACTERS:
        # Characters as Python counts them (code points).
        raise ContentLimitError(
            f"text is {len(text)} characters; WhatsApp takes at most {WHATSAPP_TEXT_CHARACTERS}"
        )
    if channel == "instagram" and (size := len(text.encode("utf-8"))) > INSTAGRAM_TEXT_BYTES:
        raise ContentLimitError(
            f"text is {size} bytes of UTF-8; Instagram takes at most {INSTAGRAM_TEXT_BYTES}"
        )


def media_type(channel: str, *, mime_type: str, filename: str, size: int | None) -> MediaType:
    """The type a file goes out as on `channel`, or ContentLimitError naming the limit (a MIME
    type the channel does not take, a file over its type's size)."""
    mime = _mime_of(channel, mime_type, filename)
    for kind in MEDIA[channel]:
        if mime in kind.mime_types:
            if size is not None and size > kind.max_bytes:
                raise ContentLimitError(
                    f"{kind.name} is {_size(size)}; {_name(channel)} takes {mime} "
                    f"{kind.name}s up to {_size(kind.max_bytes)}"
                )
            return kind
    known = ", ".join(sorted(m for kind in MEDIA[channel] for m in kind.mime_types))
    raise ContentLimitError(
        f"unsupported media type {mime or 'unknown'!r}; {_name(channel)} takes {known}"
    )


def check_caption(channel: str, kind: MediaType, caption: str) -> None:
    if kind.caption and len(caption) > WHATSAPP_CAPTION_CHARACTERS:
        raise ContentLimitError(
            f"caption is {len(caption)} characters; {_name(channel)} takes at most "
            f"{WHATSAPP_CAPTION_CHARACTERS}"
        )


def check_template(channel: str) -> None:
    """Templates are WhatsApp's: UnsupportedMessageError on any other channel."""
    if channel != "whatsapp":
        raise UnsupportedMessageError(
            f"{_name(channel)} has no template messages; a template goes to WhatsApp only"
        )


def _mime_of(channel: str, mime_type: str, filename: str) -> str:
    """The file's MIME type, lower case without parameters; from its extension when it came
    without one."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime:
        return mime
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    for kind in MEDIA[channel]:
        for candidate, extensions in kind.mime_types.items():
            if extension in extensions:
                return candidate
    return ""


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / KB:.0f} KB"
