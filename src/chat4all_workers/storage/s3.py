"""The process's one S3 client and the object keys of SPEC section 6."""

from __future__ import annotations

import re

from miniopy_async.api import Minio

from chat4all_workers.config import S3Settings

# Separators and control characters, C1 (U+0080-U+009F) included.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]+")
# A key segment longer than this many BYTES fails on S3 servers that map it to a file name.
_MAX_NAME_BYTES = 255


def new_client(settings: S3Settings) -> Minio:
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get(),
        secret_key=settings.secret_key.get(),
        secure=settings.secure,
        region=settings.region,
    )


def chunk_key(upload_id: str, number: int) -> str:
    return f"chunks/{upload_id}/chunk-{number:05d}"


def sanitize_filename(filename: str) -> str:
    """A filename safe as the last segment of an object key: no separators, `..` or controls."""
    cleaned = _UNSAFE.sub("_", filename).strip().strip(".")
    cleaned = cleaned.replace("..", "_")
    # Cut at a character boundary: a name of multi-byte characters stays valid UTF-8.
    cleaned = cleaned.encode()[:_MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return cleaned or "file"


def file_key(upload_id: str, filename: str) -> str:
    return f"files/{upload_id}/{sanitize_filename(filename)}"
