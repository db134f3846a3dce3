"""The outbound message: what each channel of a record is asked to send, or why it cannot be.

A text goes as it is. A file message is sent only when its file is COMPLETED and its object
exists (db/files.py, S3); the channels then get a presigned download link that lives
`s3.download_url_expiry_s` (long enough for the provider to fetch it), with the file's name
and MIME type. Otherwise every channel FAILS (`file_unavailable`) with nothing called. A chosen
channel without a recipient fails alone (`invalid_record`), and so does one whose content is
over the channel's limit (`content_limit`, checked by the adapter before any call).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

import asyncpg
from miniopy_async.api import Minio
from miniopy_async.error import S3Error

from chat4all_workers.channels.base import ChannelAdapter
from chat4all_workers.db.files import get_file
from chat4all_workers.errors import InvalidRecordError, PermanentError, RetryableError
from chat4all_workers.formats.message import Message
from chat4all_workers.meta.payloads import OutboundMessage

_MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "NotFound")


class FileUnavailableError(PermanentError):
    """A file message whose file is not COMPLETED, or whose object is missing: nothing sent."""

    error_type = "file_unavailable"


Prepared = dict[str, OutboundMessage | PermanentError]


class Outbound:
    def __init__(
        self,
        adapters: Mapping[str, ChannelAdapter],
        *,
        pool: asyncpg.Pool,
        s3: Minio,
        bucket: str,
        link_expiry_s: float,
    ) -> None:
        self._adapters = adapters
        self._pool = pool
        self._s3 = s3
        self._bucket = bucket
        self._link_expiry = timedelta(seconds=link_expiry_s)

    async def prepare(self, message: Message) -> Prepared:
        """What to send per channel; a channel that cannot be sent to holds its reason."""
        document_url = filename = mime_type = ""
        file_problem: PermanentError | None = None
        if message.kind == "file":
            assert message.file_id is not None
            try:
                document_url, filename, mime_type = await self.file_link(message.file_id)
            except PermanentError as exc:
                file_problem = exc
        prepared: Prepared = {}
        for channel in message.channels:
            recipient = message.recipients.get(channel)
            if file_problem is not None:
                prepared[channel] = file_problem
            elif not recipient:
                # The reason names the field; the DLQ reason puts the channel in front once.
                prepared[channel] = InvalidRecordError(f"no recipient (recipients.{channel})")
            else:
                outbound = OutboundMessage(
                    message_id=message.message_id,
                    conversation_id=message.conversation_id,
                    recipient=recipient,
                    kind="file" if message.kind == "file" else "text",
                    text=message.content,
                    document_url=document_url,
                    filename=filename,
                    mime_type=mime_type,
                )
                try:
                    self._adapters[channel].check_content(outbound)
                    prepared[channel] = outbound
                except PermanentError as exc:  # over the channel's limit: no call at all
                    prepared[channel] = exc
        return prepared

    async def file_link(self, file_id: str) -> tuple[str, str, str]:
        """(download link, filename, MIME type) of a COMPLETED file whose object exists;
        PermanentError otherwise."""
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
        return str(url), row.filename, row.mime_type or ""
