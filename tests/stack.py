"""Where the test suite finds Kafka, PostgreSQL, Redis and S3 (harness/stack.py holds the
endpoints it finds, shared with the benchmarks).

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
from collections.abc import Awaitable, Callable

from harness import REPO
from harness.stack import StackEndpoints

DEVSTACK = REPO / "scripts" / "devstack"

# `await kafka_topic(partitions=1, prefix="test")` -> topic name (see the conftest fixture)
KafkaTopicFactory = Callable[..., Awaitable[str]]

REQUIRED_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL", "MINIO_ENDPOINT")


class StackUnavailableError(RuntimeError):
    """A backing service is missing or unreachable."""


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
