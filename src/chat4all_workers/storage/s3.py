"""The process's one S3 client and the object keys of SPEC section 6."""

from __future__ import annotations

import re

from miniopy_async.api import Minio

from chat4all_workers.config import S3Settings

# Separators and control characters, C1 (U+0080-U+009F) included.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\]+")
# A key segment longer than this many BYTES fails on S3 servers that map it to a file name.
_MAX_NAME_BYTES = 255
# What counts as an extension worth keeping: `.pdf`, `.tar.gz`'s `.gz`; not 200 bytes after a dot.
_MAX_EXTENSION_BYTES = 16


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
    """A filename safe as the last segment of an object key: no separators, `..` or controls,
    at most 255 bytes of UTF-8. A name cut to fit keeps its extension (`.pdf`), so the object
    still opens with the right program when downloaded."""
    cleaned = _UNSAFE.sub("_", filename).strip().strip(".")
    cleaned = cleaned.replace("..", "_")
    if len(cleaned.encode()) > _MAX_NAME_BYTES:
        stem, dot, extension = cleaned.rpartition(".")
        if not (dot and stem and 0 < len(extension.encode()) <= _MAX_EXTENSION_BYTES):
            stem, extension = cleaned, ""
        suffix = f".{extension}" if extension else ""
        # Cut at a character boundary: a name of multi-byte characters stays valid UTF-8; the
        # cut may leave a trailing dot, which must not meet the extension's (no `..`).
        stem = _cut(stem, _MAX_NAME_BYTES - len(suffix.encode())).rstrip(". ")
        cleaned = f"{stem or 'file'}{suffix}"
    return cleaned or "file"


def _cut(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode("utf-8", errors="ignore")


def file_key(upload_id: str, filename: str) -> str:
    return f"files/{upload_id}/{sanitize_filename(filename)}"
