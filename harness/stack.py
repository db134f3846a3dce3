"""The backing services' endpoints: where Kafka, PostgreSQL, Redis and S3 answer.

One value for every way a run finds them (tests/stack.py discovers them for the test suite, a
benchmark reads the devstack env), and the names the workers read them under (`as_environ`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from miniopy_async.api import Minio


@dataclass(frozen=True, kw_only=True)
class StackEndpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_secure: bool
    s3_bucket: str = "chat4all-files"

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str]) -> StackEndpoints:
        return cls(
            kafka_bootstrap=environ["KAFKA_BOOTSTRAP_SERVERS"],
            database_url=environ["DATABASE_URL"],
            redis_url=environ["REDIS_URL"],
            s3_endpoint=environ["MINIO_ENDPOINT"],
            s3_access_key=environ.get("MINIO_ACCESS_KEY", "chat4all"),
            s3_secret_key=environ.get("MINIO_SECRET_KEY", "chat4all-secret"),
            s3_secure=environ.get("MINIO_SECURE", "false").strip().lower() in ("1", "true", "yes"),
            s3_bucket=environ.get("MINIO_BUCKET", "chat4all-files"),
        )

    def as_environ(self) -> dict[str, str]:
        """The same endpoints under the names the workers read."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "MINIO_ENDPOINT": self.s3_endpoint,
            "MINIO_ACCESS_KEY": self.s3_access_key,
            "MINIO_SECRET_KEY": self.s3_secret_key,
            "MINIO_BUCKET": self.s3_bucket,
            "MINIO_SECURE": "true" if self.s3_secure else "false",
        }

    def s3_client(self) -> Minio:
        """A new miniopy-async client for the stack's S3 (`async with` it to close its session)."""
        return Minio(
            self.s3_endpoint,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            secure=self.s3_secure,
        )

    def addresses(self) -> dict[str, tuple[str, int]]:
        """(host, port) of each service, for reachability checks."""

        def split(hostport: str, default_port: int) -> tuple[str, int]:
            parts = urlsplit("//" + hostport)
            return parts.hostname or "127.0.0.1", parts.port or default_port

        db, rd = urlsplit(self.database_url), urlsplit(self.redis_url)
        return {
            "kafka": split(self.kafka_bootstrap.split(",")[0], 9092),
            "postgres": (db.hostname or "127.0.0.1", db.port or 5432),
            "redis": (rd.hostname or "127.0.0.1", rd.port or 6379),
            "s3": split(self.s3_endpoint, 443 if self.s3_secure else 80),
        }


def unique_name(prefix: str = "t") -> str:
    """A name no other test (or earlier run) uses: `{prefix}-{12 hex digits}`."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
