"""The auto-pipeline's own connection (redis_link.py) against real Redis servers: opened as the
client's pool would open it, failed and opened again as an outage needs."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background
from chat4all_workers.redis_link import RedisLink
from harness.deployment import free_port
from harness.stack import StackEndpoints
from harness.waiting import eventually
from tests.roles.durable_support import TcpProxy
from tests.support import own_redis

pytestmark = pytest.mark.stack

PipeOf = Callable[..., AutoPipeline]


@pytest.fixture
async def pipe_of(background: Background) -> AsyncIterator[PipeOf]:
    """`pipe_of(client, timeout_s=...)`: an auto-pipeline over `client`, its connection closed
    after the test."""
    made: list[AutoPipeline] = []

    def make(client: aioredis.Redis, *, timeout_s: float = 5.0) -> AutoPipeline:
        made.append(AutoPipeline(client, spawn=background.spawn, timeout_s=timeout_s))
        return made[-1]

    yield make
    for pipe in made:
        pipe.close()


async def _answers(client: aioredis.Redis) -> bool:
    """Whether the test's own Redis has started (it takes a moment)."""
    try:
        return bool(await client.ping())
    except redis_errors.ConnectionError:
        return False


async def _names_and_dbs(client: aioredis.Redis) -> dict[str, int]:
    """The clients Redis has connected: each one's name and database."""
    return {c["name"]: int(c["db"]) for c in await client.client_list() if c["name"]}


async def test_the_connection_is_opened_as_the_url_says_user_password_database_and_name(
    pipe_of: PipeOf, tmp_path: Path
) -> None:
    port = free_port()
    name = f"pipe-{uuid.uuid4().hex[:8]}"
    with own_redis(port, tmp_path, password="admin-secret"):
        admin = aioredis.Redis(port=port, password="admin-secret")
        try:
            await eventually(lambda: _answers(admin), timeout_s=10, message="Redis answering")
            await admin.acl_setuser(
                "worker", enabled=True, passwords=["+w-secret"], keys="*", commands=["+@all"]
            )
            url = f"redis://worker:w-secret@127.0.0.1:{port}/5?client_name={name}"
            client = aioredis.Redis.from_url(url)
            pipe = pipe_of(client)
            stored = await pipe.execute("SET", "k", "v")
            who = await pipe.execute("ACL", "WHOAMI")
            named = await _names_and_dbs(admin)
            db5 = aioredis.Redis(port=port, password="admin-secret", db=5)
            in_db5 = await db5.get("k")
            await db5.aclose()

            refused_client = aioredis.Redis.from_url(url.replace("w-secret", "wrong"))
            wrong = pipe_of(refused_client)
            refused = await asyncio.gather(
                *(wrong.execute("GET", "k") for _ in range(3)), return_exceptions=True
            )
            await refused_client.aclose()
            await client.aclose()
        finally:
            await admin.aclose()

    assert stored == b"OK"
    assert who == b"worker"
    assert named[name] == 5
    assert in_db5 == b"v"
    # WRONGPASS: redis-py's AuthenticationError (a ConnectionError), for every caller.
    assert [type(r) for r in refused] == [redis_errors.AuthenticationError] * 3


async def test_a_unix_socket_and_decoded_replies_as_the_client_has_them(
    pipe_of: PipeOf, tmp_path: Path
) -> None:
    socket_path = tmp_path / "redis.sock"
    with own_redis(free_port(), tmp_path, unix_socket=socket_path):
        client = aioredis.Redis.from_url(f"unix://{socket_path}?db=2", decode_responses=True)
        try:
            await eventually(lambda: _answers(client), timeout_s=10, message="Redis answering")
            pipe = pipe_of(client)
            stored = await pipe.execute("SET", "k", "é")
            read = await pipe.execute("GET", "k")
            in_db2 = await client.get("k")
        finally:
            await client.aclose()

    assert stored == "OK"
    assert read == "é"  # decoded, as the client's own GET gives it
    assert in_db2 == "é"


async def test_a_server_that_never_answers_fails_each_caller_with_a_timeout_then_a_new_connection(
    pipe_of: PipeOf,
) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):  # reads every command, answers none
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port)
    try:
        pipe = pipe_of(client, timeout_s=0.3)
        first = await asyncio.gather(
            *(pipe.execute("GET", f"k{i}") for i in range(4)), return_exceptions=True
        )
        second = await asyncio.gather(pipe.execute("GET", "k"), return_exceptions=True)
    finally:
        await client.aclose()
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()

    assert [type(r) for r in first] == [redis_errors.TimeoutError] * 4
    assert [type(r) for r in second] == [redis_errors.TimeoutError]
    assert len(connections) == 2  # the timed-out connection was dropped, not reused


@pytest.fixture
async def shared(
    pipe_of: PipeOf, stack: StackEndpoints
) -> AsyncIterator[tuple[aioredis.Redis, AutoPipeline, int]]:
    """A client of the stack's Redis, an auto-pipeline over it, and its connection's id."""
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        pipe = pipe_of(client)
        yield client, pipe, await pipe.execute("CLIENT", "ID")
    finally:
        await client.aclose()


async def test_a_connection_redis_drops_fails_the_callers_waiting_and_the_next_command_reconnects(
    shared: tuple[aioredis.Redis, AutoPipeline, int], redis_prefix: str
) -> None:
    client, pipe, link_id = shared
    waiting = pipe.execute("BLPOP", f"{redis_prefix}empty", 30)
    await eventually(lambda: _blocked(client, link_id), timeout_s=10, message="BLPOP in Redis")
    await client.client_kill_filter(_id=str(link_id))
    failed = await asyncio.gather(waiting, return_exceptions=True)
    after = await pipe.execute("CLIENT", "ID")
    stored = await pipe.execute("SET", f"{redis_prefix}k", "v")

    assert [type(r) for r in failed] == [redis_errors.ConnectionError]
    assert after != link_id
    assert stored == b"OK"


async def test_the_reply_to_a_cancelled_caller_is_read_and_the_next_caller_gets_its_own(
    shared: tuple[aioredis.Redis, AutoPipeline, int], redis_prefix: str
) -> None:
    client, pipe, link_id = shared
    cancelled = pipe.execute("BLPOP", f"{redis_prefix}empty", 0.5)  # answered nil in 0.5 s
    await eventually(lambda: _blocked(client, link_id), timeout_s=10, message="BLPOP in Redis")
    cancelled.cancel()
    count = await pipe.execute("INCR", f"{redis_prefix}n")  # answered after the BLPOP's nil
    read = await pipe.execute("GET", f"{redis_prefix}n")

    assert cancelled.cancelled()
    assert count == 1
    assert read == b"1"
    assert await pipe.execute("CLIENT", "ID") == link_id  # the connection stayed in step


async def _blocked(client: aioredis.Redis, link_id: int) -> bool:
    return any(int(c["id"]) == link_id and c["cmd"] == "blpop" for c in await client.client_list())


async def test_a_server_that_does_not_speak_redis_fails_the_callers_not_the_loop(
    pipe_of: PipeOf,
) -> None:
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # a web server on Redis's port
        await writer.drain()
        await reader.read(65536)  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(garbled, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(port=port)
    try:
        pipe = pipe_of(client)
        results = await asyncio.gather(
            *(pipe.execute("GET", f"k{i}") for i in range(3)), return_exceptions=True
        )
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()

    assert [type(r) for r in results] == [redis_errors.InvalidResponse] * 3


async def test_a_tls_url_is_opened_over_tls_and_checks_the_servers_certificate(
    pipe_of: PipeOf, stack: StackEndpoints, redis_prefix: str, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await made.wait() == 0
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    parts = urlsplit(stack.redis_url)
    proxy = TcpProxy(f"{parts.hostname}:{parts.port or 6379}", tls=tls)  # TLS, then the stack's
    await proxy.start()
    url = f"rediss://{proxy.address}/0"
    trusted = aioredis.Redis.from_url(url, ssl_ca_certs=str(cert))
    untrusted = aioredis.Redis.from_url(url)  # the system's CAs only
    cleartext = aioredis.Redis.from_url(f"redis://{proxy.address}/0", socket_timeout=2)
    plain = aioredis.Redis.from_url(stack.redis_url)
    try:
        stored = await pipe_of(trusted).execute("SET", f"{redis_prefix}tls", "over tls")
        refused = await asyncio.gather(
            pipe_of(untrusted).execute("GET", f"{redis_prefix}tls"), return_exceptions=True
        )
        without_tls = await asyncio.gather(
            pipe_of(cleartext, timeout_s=2).execute("GET", f"{redis_prefix}tls"),
            return_exceptions=True,
        )
        read = await plain.get(f"{redis_prefix}tls")
    finally:
        for client in (trusted, untrusted, cleartext, plain):
            await client.aclose()
        await proxy.stop()

    assert stored == b"OK"
    assert read == b"over tls"
    # A self-signed certificate the client was not told to trust: refused, as an outage is.
    assert [type(r) for r in refused] == [redis_errors.ConnectionError]
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused[0])
    # The listener speaks only TLS (the same command in clear text is cut): it went over TLS.
    assert [type(r) for r in without_tls] == [redis_errors.ConnectionError]


class _ForeignTransport:
    """A stream transport of another event loop's making: uvloop's are not subclasses of
    asyncio.Transport (a host program may embed the workers in its uvloop loop)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


async def test_a_transport_not_of_asyncio_s_classes_carries_the_commands_and_replies() -> None:
    link = RedisLink(timeout_s=5.0, encoding=None, errors="strict")
    transport = _ForeignTransport()
    link.connection_made(cast(asyncio.BaseTransport, transport))
    reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    link.send(b"*1\r\n$4\r\nPING\r\n", [reply])
    link.data_received(b"+PONG\r\n")

    assert transport.written == [b"*1\r\n$4\r\nPING\r\n"]
    assert await reply == b"PONG"
    link.close()
    assert transport.aborted
