"""The channel adapters' HTTP client against real loopback servers that answer byte for byte as
scripted: keep-alive, chunked bodies, servers that close, stall, lie or reset, and TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from chat4all_workers.channels.http import (
    HttpClient,
    HTTPTransportError,
    RequestCancelledError,
    RequestTimeoutError,
    Response,
)
from harness.waiting import eventually

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id":"m1"}'
Answer = Callable[[bytes], bytes | None]  # request bytes -> raw response (None: say nothing)


@dataclass
class RawServer:
    """Reads each request (head and Content-Length body) and writes back `answer(request)`."""

    answer: Answer
    close_after_answer: bool = False
    delay_s: float = 0.0  # before each answer
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                response = self.answer(request)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if response is None:
                    await reader.read()  # stall until the client gives up
                    return
                writer.write(response)
                await writer.drain()
                if self.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            writer.close()


class Serve(Protocol):
    async def __call__(
        self,
        answer: Answer,
        *,
        close_after_answer: bool = False,
        tls: ssl.SSLContext | None = None,
        delay_s: float = 0.0,
    ) -> RawServer: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(
        answer: Answer,
        *,
        close_after_answer: bool = False,
        tls: ssl.SSLContext | None = None,
        delay_s: float = 0.0,
    ) -> RawServer:
        raw = RawServer(answer, close_after_answer, delay_s=delay_s)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=tls)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return raw

    yield start
    for server in servers:
        server.close()


async def post(
    client: HttpClient, server: RawServer, *, timeout_s: float = 5.0, tls: bool = False
) -> Response:
    scheme = "https" if tls else "http"
    host = "localhost" if tls else "127.0.0.1"
    return await client.post(
        f"{scheme}://{host}:{server.port}/v21.0/1234/messages?x=1",
        body=b'{"to":"+55"}',
        headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"},
        timeout_s=timeout_s,
    )


async def test_sends_the_request_and_reuses_the_connection(serve: Serve) -> None:
    server = await serve(lambda _: OK)
    async with HttpClient() as client:
        first = await post(client, server)
        second = await post(client, server)

    assert (first.status, first.body, first.headers["content-type"]) == (
        200,
        b'{"id":"m1"}',
        "application/json",
    )
    assert second.body == first.body
    assert server.connections == 1
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v21.0/1234/messages?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"Authorization: Bearer t0ken" in lines
    assert b"Content-Length: 12" in lines
    assert body == b'{"to":"+55"}'


async def test_a_chunked_answer_is_put_together(serve: Serve) -> None:
    chunked = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"err\r\n9\r\nor":"slow\r\n2\r\n"}\r\n0\r\n\r\n'
    )
    server = await serve(lambda _: chunked)
    async with HttpClient() as client:
        response = await post(client, server)
        again = await post(client, server)

    assert (response.status, response.body) == (429, b'{"error":"slow"}')
    assert response.headers["retry-after"] == "3"
    assert again.body == response.body
    assert server.connections == 1


async def test_connection_close_is_honoured(serve: Serve) -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = await serve(lambda _: closing, close_after_answer=True)
    async with HttpClient() as client:
        await post(client, server)
        await post(client, server)

    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Serve) -> None:
    server = await serve(lambda _: OK, close_after_answer=True)  # closes without saying so
    async with HttpClient() as client:
        await post(client, server)
        idle = client._idle  # the one idle connection, until it hears the close
        await eventually(lambda: all(c.closed for q in idle.values() for c in q), timeout_s=5)
        response = await post(client, server)

    assert response.status == 200
    assert server.connections == 2


async def test_idle_connections_expire(serve: Serve) -> None:
    server = await serve(lambda _: OK)
    async with HttpClient(idle_timeout_s=0.0) as client:
        await post(client, server)
        await post(client, server)

    assert server.connections == 2


async def test_a_silent_server_times_out_and_its_connection_is_dropped(serve: Serve) -> None:
    answers = iter([None, OK])
    server = await serve(lambda _: next(answers))
    async with HttpClient() as client:
        with pytest.raises(RequestTimeoutError) as timed_out:
            await post(client, server, timeout_s=0.3)
        response = await post(client, server)

    assert timed_out.value.request_written  # the provider may have it
    assert response.status == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"cut', "closed before the response ended"),
        (b"SMTP ready\r\n\r\n", "malformed HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 2_000_000, "over"),
    ],
    ids=["cut-short", "not-http", "too-big"],
)
async def test_a_bad_answer_is_a_transport_error(serve: Serve, raw: bytes, match: str) -> None:
    server = await serve(lambda _: raw, close_after_answer=True)
    async with HttpClient() as client:
        with pytest.raises(HTTPTransportError, match=match) as failed:
            await post(client, server)
        assert failed.value.request_written
        # A fresh connection for what follows: whatever broke stays broken alone.
        assert not any(client._idle.values())


async def test_an_answer_nobody_asked_for_retires_the_connection(serve: Serve) -> None:
    server = await serve(lambda _: OK + OK)
    async with HttpClient() as client:
        response = await post(client, server)  # the first answer is the answer
        assert not any(client._idle.values())  # the connection is out of step: not reused
        await post(client, server)

    assert response.status == 200
    assert server.connections == 2


async def test_a_refused_connection_says_nothing_was_written() -> None:
    async with HttpClient() as client:
        with pytest.raises(HTTPTransportError) as refused:
            await client.post("http://127.0.0.1:1/x", body=b"{}", headers={}, timeout_s=5)

    assert isinstance(refused.value.__cause__, ConnectionRefusedError)
    assert not refused.value.request_written


async def test_a_connect_timeout_says_nothing_was_written(serve: Serve) -> None:
    # A plain TCP server that never answers the TLS handshake: the connect itself times out.
    server = await serve(lambda _: None)
    async with HttpClient() as client:
        with pytest.raises(RequestTimeoutError, match="could not connect") as timed_out:
            await post(client, server, tls=True, timeout_s=0.3)

    assert not timed_out.value.request_written
    assert server.requests == []


async def test_a_header_cannot_smuggle_a_line() -> None:
    async with HttpClient() as client:
        with pytest.raises(ValueError, match="line break"):
            await client.post(
                "http://127.0.0.1:1/x",
                body=b"{}",
                headers={"Authorization": "Bearer t\r\nX-Evil: 1"},
                timeout_s=5,
            )
        with pytest.raises(ValueError, match="not an http"):
            await client.post("ftp://example.org/x", body=b"", headers={}, timeout_s=5)


async def test_aclose_closes_idle_connections(serve: Serve) -> None:
    server = await serve(lambda _: OK)
    async with HttpClient() as client:
        await post(client, server)

    await eventually(lambda: server.closed_by_client == 1, timeout_s=5)
    with pytest.raises(RuntimeError, match="closed"):
        await post(client, server)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost`, made by the openssl command line."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_verifies_the_certificate(serve: Serve, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await serve(lambda _: OK, tls=server_tls)
    trusting = ssl.create_default_context(cafile=str(cert))

    async with HttpClient(ssl_context=trusting) as client:
        response = await post(client, server, tls=True)
        await post(client, server, tls=True)
    async with HttpClient() as client:  # the system's CAs do not know this certificate
        with pytest.raises(HTTPTransportError) as refused:
            await post(client, server, tls=True)

    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert not refused.value.request_written
    assert response.body == b'{"id":"m1"}'
    assert f"Host: localhost:{server.port}".encode() in server.requests[0]
    # Both requests on one TLS connection; the untrusting client never got past the handshake.
    assert (server.connections, len(server.requests)) == (1, 2)


async def test_a_request_cancelled_after_writing_is_finished_and_the_cancel_comes_next(
    serve: Serve,
) -> None:
    # The answer comes 0.3 s after the request; the caller is cancelled in between.
    server = await serve(lambda _: OK, delay_s=0.3)
    got: list[Response] = []
    async with HttpClient() as client:

        async def caller() -> None:
            got.append(await post(client, server))
            await asyncio.sleep(10)  # the next await: the cancellation lands here

        task = asyncio.ensure_future(caller())
        await eventually(lambda: len(server.requests) == 1, timeout_s=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r.status for r in got] == [200]  # the written request was finished, not dropped
        await post(client, server)  # and its connection, answered in full, is reused

    assert server.connections == 1


async def test_a_request_cancelled_twice_gives_up_and_says_it_was_written(serve: Serve) -> None:
    server = await serve(lambda _: None)  # never answers
    async with HttpClient() as client:
        task = asyncio.ensure_future(post(client, server))
        await eventually(lambda: len(server.requests) == 1, timeout_s=5)
        task.cancel()
        await asyncio.sleep(0.05)  # it is finishing the request now
        task.cancel()
        with pytest.raises(RequestCancelledError) as cancelled:
            await task

    assert cancelled.value.request_written
