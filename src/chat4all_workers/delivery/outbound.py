"""The outbound message: what each channel of a record is asked to send, or why it cannot be.

A text goes as it is, within the channel's text limit. A template goes to WhatsApp as Meta's
template object; other channels have none. A file message is sent only when its file is
COMPLETED and its object exists (db/files.py, S3): each channel gets a presigned download link
that lives `files.download_url_expiry_s` (long enough for the provider to fetch it) and sends it
as the media type its MIME type says, within that type's size (meta/limits.py: image, video,
audio, document, sticker on WhatsApp; image, video, audio, file on Instagram), with its caption
and filename where the type takes them. Whatever cannot be sent FAILS for that channel alone,
naming the limit, with nothing called: no file (`file_unavailable`), no recipient
(`invalid_record`), over a limit (`content_limit`), a kind the channel has not
(`unsupported_message`).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from miniopy_async.api import Minio
from miniopy_async.error import S3Error

from chat4all_workers.db.files import get_file
from chat4all_workers.errors import InvalidRecordError, PermanentError, RetryableError
from chat4all_workers.formats.message import Message
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.limits import check_caption, check_template, check_text, media_type
from chat4all_workers.meta.payloads import OutboundMessage

_MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NotFound")


class FileUnavailableError(PermanentError):
    """A file message whose file is not COMPLETED, or whose object is missing: nothing sent."""

    error_type = "file_unavailable"


@frozen
class FileLink:
    url: str
    filename: str
    mime_type: str
    size: int | None


Prepared = dict[str, OutboundMessage | PermanentError]


class Outbound:
    def __init__(self, *, pool: asyncpg.Pool, s3: Minio, bucket: str, link_expiry_s: float) -> None:
        self._pool = pool
        self._s3 = s3
        self._bucket = bucket
        self._link_expiry = timedelta(seconds=link_expiry_s)

    async def prepare(self, message: Message, *, origin: str) -> Prepared:
        """What to send per channel; a channel that cannot be sent to holds its reason.
        `origin` ("{topic}:{partition}:{offset}") rides the callback data."""
        link: FileLink | PermanentError | None = None
        if message.kind == "file":
            assert message.file_id is not None
            try:
                link = await self.file_link(message.file_id)
            except PermanentError as exc:
                link = exc
        prepared: Prepared = {}
        for channel in message.channels:
            recipient = message.recipients.get(channel)
            if isinstance(link, PermanentError):
                prepared[channel] = link
            elif not recipient:
                # The reason names the field; the DLQ reason puts the channel in front once.
                prepared[channel] = InvalidRecordError(f"no recipient (recipients.{channel})")
            else:
                try:
                    prepared[channel] = _for_channel(channel, message, recipient, origin, link)
                except PermanentError as exc:  # over the channel's limits: no call at all
                    prepared[channel] = exc
        return prepared

    async def file_link(self, file_id: str) -> FileLink:
        """The download link of a COMPLETED file whose object exists; PermanentError
        otherwise."""
        row = await get_file(self._pool, uuid.UUID(file_id))
        if row is None:
            raise FileUnavailableError(f"payload.file_id: file {file_id} does not exist")
        if row.status != "COMPLETED" or not row.storage_key:
            raise FileUnavailableError(
                f"payload.file_id: file {file_id} is {row.status}, not COMPLETED"
            )
        try:
            await self._s3.stat_object(self._bucket, row.storage_key)
        except S3Error as exc:
            if exc.code in _MISSING_OBJECT:
                raise FileUnavailableError(
                    f"payload.file_id: the object of file {file_id} is missing"
                ) from None
            raise RetryableError(f"s3: {exc.code}") from exc
        url = await self._s3.presigned_get_object(
            self._bucket, row.storage_key, expires=self._link_expiry
        )
        return FileLink(str(url), row.filename, row.mime_type or "", row.file_size)


def _for_channel(
    channel: str, message: Message, recipient: str, origin: str, link: FileLink | None
) -> OutboundMessage:
    """The message as `channel` takes it, or the PermanentError naming why it cannot. Built
    once per kind (not from a text message through `dataclasses.replace`: that was about 2 % of the
    router's CPU in phase (b) of bench/router.py)."""
    ids = (message.message_id, message.conversation_id, recipient)
    if message.kind == "template":
        check_template(channel)
        return OutboundMessage(*ids, "template", template=message.template, origin=origin)
    if link is not None:
        kind = media_type(channel, mime_type=link.mime_type, filename=link.filename, size=link.size)
        check_caption(channel, kind, message.content)
        return OutboundMessage(
            *ids,
            "media",
            text=message.content if kind.caption else "",
            media_url=link.url,
            media_type=kind.name,
            filename=link.filename if kind.filename else "",
            caption=kind.caption,
            origin=origin,
        )
    check_text(channel, message.content)
    return OutboundMessage(*ids, "text", text=message.content, origin=origin)
