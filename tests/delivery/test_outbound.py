"""The outbound message (delivery/outbound.py), against real PostgreSQL and S3 and the real
adapters' content checks: what each channel of a record is asked to send, or why it cannot be."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest
from miniopy_async.api import Minio

from chat4all_workers.db.migrate import migrate
from chat4all_workers.delivery.outbound import FileUnavailableError, Outbound
from chat4all_workers.errors import ContentLimitError, InvalidRecordError, RetryableError
from chat4all_workers.formats.message import Message
from chat4all_workers.meta.payloads import OutboundMessage
from harness.stack import StackEndpoints

pytestmark = [pytest.mark.stack, pytest.mark.timeout(60)]

ORIGIN = "message_processing:3:120"
LINK_EXPIRY_S = 3600
RECIPIENTS = {"whatsapp": "+5511999990000", "instagram": "17841400000000"}


@dataclass
class Files:
    """The router's view of uploaded files: its database, its bucket, its Outbound."""

    pool: asyncpg.Pool
    s3: Minio
    bucket: str
    outbound: Outbound

    async def add(
        self, status: str, *, with_object: bool = True, filename: str = "report.pdf"
    ) -> str:
        """A `files` row in `status` (COMPLETED ones with a storage key, and its object unless
        `with_object` is false); its id."""
        file_id = uuid.uuid4()
        key = f"files/{file_id}/{filename}" if status == "COMPLETED" else None
        await self.pool.execute(
            """INSERT INTO files (id, filename, status, storage_key, mime_type)
               VALUES ($1, $2, $3, $4, 'application/pdf')""",
            file_id,
            filename,
            status,
            key,
        )
        if key is not None and with_object:
            await self.s3.put_object(self.bucket, key, io.BytesIO(b"%PDF-1.7"), 8)
        return str(file_id)


@pytest.fixture
async def files(
    stack: StackEndpoints, pg_database: str, s3_bucket: str, s3_client: Minio
) -> AsyncIterator[Files]:
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    async with asyncpg.create_pool(pg_database, min_size=1) as pool:
        outbound = Outbound(
            pool=pool,
            s3=s3_client,
            bucket=s3_bucket,
            link_expiry_s=LINK_EXPIRY_S,
        )
        yield Files(pool, s3_client, s3_bucket, outbound)


def message(
    *,
    text: str = "hello",
    file_id: str | None = None,
    channels: tuple[str, ...] = ("whatsapp", "instagram"),
    recipients: dict[str, str] | None = None,
) -> Message:
    return Message(
        message_id=str(uuid.uuid4()),
        conversation_id=42,
        sender_id=7,
        sender_username=None,
        kind="file" if file_id else "text",
        content=text,
        file_id=file_id,
        channels=channels,
        recipients=RECIPIENTS if recipients is None else recipients,
        created_at=None,
    )


async def test_outbound_prepare_asks_each_channel_for_the_text(files: Files) -> None:
    text = message(text="oi")

    prepared = await files.outbound.prepare(text, origin=ORIGIN)

    assert prepared == {
        channel: OutboundMessage(
            message_id=text.message_id,
            conversation_id=42,
            recipient=RECIPIENTS[channel],
            kind="text",
            text="oi",
            origin=ORIGIN,
        )
        for channel in ("whatsapp", "instagram")
    }


async def test_outbound_prepare_links_a_completed_file_for_link_expiry_s(files: Files) -> None:
    file_id = await files.add("COMPLETED")

    prepared = await files.outbound.prepare(
        message(file_id=file_id, text="a caption"), origin=ORIGIN
    )

    whatsapp, instagram = prepared["whatsapp"], prepared["instagram"]
    assert isinstance(whatsapp, OutboundMessage)
    assert isinstance(instagram, OutboundMessage)
    assert (whatsapp.kind, whatsapp.media_type, whatsapp.filename, whatsapp.text) == (
        "media",
        "document",
        "report.pdf",
        "a caption",
    )
    assert (instagram.kind, instagram.media_type, instagram.filename, instagram.text) == (
        "media",
        "file",
        "",
        "",  # Instagram attachments take no caption
    )
    query = parse_qs(urlsplit(whatsapp.media_url).query)
    assert query["X-Amz-Expires"] == [str(LINK_EXPIRY_S)]
    async with aiohttp.ClientSession() as http, http.get(whatsapp.media_url) as response:
        assert (response.status, await response.read()) == (200, b"%PDF-1.7")  # the provider's view


async def test_outbound_prepare_fails_every_channel_for_a_file_that_does_not_exist(
    files: Files,
) -> None:
    file_id = str(uuid.uuid4())

    prepared = await files.outbound.prepare(message(file_id=file_id), origin=ORIGIN)

    for problem in prepared.values():
        assert isinstance(problem, FileUnavailableError)
        assert str(problem) == f"payload.file_id: file {file_id} does not exist"
        assert problem.error_type == "file_unavailable"


async def test_outbound_prepare_fails_every_channel_for_a_file_not_completed(
    files: Files,
) -> None:
    file_id = await files.add("UPLOADING")

    prepared = await files.outbound.prepare(message(file_id=file_id), origin=ORIGIN)

    assert {c: str(p) for c, p in prepared.items()} == dict.fromkeys(
        ("whatsapp", "instagram"), f"payload.file_id: file {file_id} is UPLOADING, not COMPLETED"
    )


async def test_outbound_prepare_fails_every_channel_for_a_file_whose_object_is_missing(
    files: Files,
) -> None:
    file_id = await files.add("COMPLETED", with_object=False)

    prepared = await files.outbound.prepare(message(file_id=file_id), origin=ORIGIN)

    for problem in prepared.values():
        assert isinstance(problem, FileUnavailableError)
        assert str(problem) == f"payload.file_id: the object of file {file_id} is missing"


async def test_outbound_file_link_of_an_unreadable_bucket_is_retried(files: Files) -> None:
    file_id = await files.add("COMPLETED")
    elsewhere = Outbound(
        pool=files.pool, s3=files.s3, bucket="no-such-bucket-0", link_expiry_s=LINK_EXPIRY_S
    )

    with pytest.raises(RetryableError, match=r"^s3: NoSuchBucket$"):
        await elsewhere.file_link(file_id)


async def test_outbound_prepare_refuses_a_text_over_one_channels_limit_on_that_channel_only(
    files: Files,
) -> None:
    text = message(text="a" * 1001)  # within WhatsApp's 4,096 characters, over Instagram's bytes

    prepared = await files.outbound.prepare(text, origin=ORIGIN)

    assert isinstance(prepared["whatsapp"], OutboundMessage)
    assert isinstance(prepared["instagram"], ContentLimitError)
    assert "1001 bytes of UTF-8; Instagram takes at most 1000" in str(prepared["instagram"])


async def test_outbound_prepare_fails_a_channel_without_a_recipient_alone(files: Files) -> None:
    text = message(recipients={"whatsapp": RECIPIENTS["whatsapp"]})

    prepared = await files.outbound.prepare(text, origin=ORIGIN)

    assert isinstance(prepared["whatsapp"], OutboundMessage)
    assert isinstance(prepared["instagram"], InvalidRecordError)
    assert str(prepared["instagram"]) == "no recipient (recipients.instagram)"
