"""Where the test suite finds Kafka, PostgreSQL, Redis and S3.

In order:
1. the environment (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `REDIS_URL`, `MINIO_ENDPOINT`,
   `MINIO_ACCESS_KEY`, `MINIO_SECRET_KEY`, `MINIO_SECURE`), as `make test` exports them;
2. testcontainers, when a Docker daemon answers;
3. `scripts/devstack up`, then the values of `scripts/devstack env`.

A service that cannot be found or reached is a hard error, never a skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from miniopy_async.api import Minio

REPO = Path(__file__).resolve().parent.parent
DEVSTACK = REPO / "scripts" / "devstack"

# `await kafka_topic(partitions=1, prefix="test")` -> topic name (see the conftest fixture)
KafkaTopicFactory = Callable[..., Awaitable[str]]

REQUIRED_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL", "MINIO_ENDPOINT")


class StackUnavailableError(RuntimeError):
    """A backing service is missing or unreachable."""


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


def wait_reachable(stack: StackEndpoints, *, timeout_s: float = 30.0) -> None:
    """Raise StackUnavailableError naming every service whose port does not accept a connection
    within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pending = dict(stack.addresses())
    while pending:
        for name, (host, port) in list(pending.items()):
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                del pending[name]
        if pending and time.monotonic() > deadline:
            missing = ", ".join(f"{n} at {h}:{p}" for n, (h, p) in pending.items())
            raise StackUnavailableError(f"unreachable after {timeout_s:.0f} s: {missing}")
        if pending:
            time.sleep(0.2)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def from_devstack() -> StackEndpoints:
    """Run `scripts/devstack up` (idempotent) and read `scripts/devstack env`."""
    up = subprocess.run(
        [str(DEVSTACK), "up"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if up.returncode != 0:
        raise StackUnavailableError(f"scripts/devstack up failed:\n{up.stderr}{up.stdout}")
    out = subprocess.run(
        [str(DEVSTACK), "env"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    environ: dict[str, str] = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            environ[key] = value
    return StackEndpoints.from_environ(environ)


def from_testcontainers(stack: contextlib.ExitStack) -> StackEndpoints:
    """Start Kafka, PostgreSQL, Redis and MinIO containers; `stack` stops them."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers < 4.14 kept the modules at the top level
        from testcontainers.kafka import KafkaContainer  # type: ignore[no-redef,unused-ignore]
        from testcontainers.postgres import PostgresContainer  # type: ignore[no-redef,unused-ignore]
        from testcontainers.redis import RedisContainer  # type: ignore[no-redef,unused-ignore]

    kafka = stack.enter_context(KafkaContainer().with_kraft())
    postgres = stack.enter_context(
        PostgresContainer(
            "postgres:15", username="chat4all", password="chat4all", dbname="chat4all", driver=None
        )
    )
    redis = stack.enter_context(RedisContainer("redis:7"))
    # A plain container: testcontainers' MinioContainer needs the sync `minio` package.
    minio = stack.enter_context(
        DockerContainer("minio/minio:latest")
        .with_env("MINIO_ROOT_USER", "chat4all")
        .with_env("MINIO_ROOT_PASSWORD", "chat4all-secret")
        .with_command("server /data")
        .with_exposed_ports(9000)
    )
    wait_for_logs(minio, "API:", timeout=60)
    endpoints = StackEndpoints(
        kafka_bootstrap=kafka.get_bootstrap_server(),
        database_url=postgres.get_connection_url(),
        redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
        s3_endpoint=f"{minio.get_container_host_ip()}:{minio.get_exposed_port(9000)}",
        s3_access_key="chat4all",
        s3_secret_key="chat4all-secret",
        s3_secure=False,
    )
    ensure_bucket(endpoints)
    return endpoints


def ensure_bucket(endpoints: StackEndpoints) -> None:
    """Create `endpoints.s3_bucket` if missing (on a private loop in a worker thread, so that it
    never touches the test session's event loop)."""

    async def make() -> None:
        async with endpoints.s3_client() as client:
            if not await client.bucket_exists(endpoints.s3_bucket):
                await client.make_bucket(endpoints.s3_bucket)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, make()).result(timeout=120)


def discover(exit_stack: contextlib.ExitStack) -> StackEndpoints:
    """Find or start the stack (see the module docstring) and check every service answers."""
    if all(os.environ.get(name) for name in REQUIRED_ENV):
        endpoints = StackEndpoints.from_environ(os.environ)
    elif docker_available():
        endpoints = from_testcontainers(exit_stack)
    else:
        endpoints = from_devstack()
    wait_reachable(endpoints)
    return endpoints
