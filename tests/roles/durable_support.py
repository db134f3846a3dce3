"""Test helpers for the durable pipeline: wait for a topic's records, and an outage on demand.

`TcpProxy` is a loopback TCP proxy: a client set to its address loses its server when it stops.

`KafkaProxy` is a loopback TCP proxy in front of the shared broker that also rewrites Metadata
responses so the broker appears to live at the proxy's address. Without the rewrite only the
bootstrap connection would pass through it: the broker advertises 127.0.0.1:9092 and a client
would connect there directly once it has metadata. With it, every producer connection goes
through the proxy, and `stop()` (close the listener and cut every live connection) is an honest
network outage for that client only, while other engineers keep using the broker. It assumes a
single-broker cluster (the dev stack); only Metadata carries broker addresses for a producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator

from aiokafka.protocol import metadata as metadata_protocol
from aiokafka.structs import ConsumerRecord

from harness.stack import StackEndpoints
from harness.topics import read_topic
from harness.waiting import eventually

_METADATA_API_KEY = 3


async def wait_for_records(
    stack: StackEndpoints, topic: str, *, expect: int, timeout_s: float = 30.0
) -> list[tuple[int, bytes | None, bytes, dict[str, bytes]]]:
    """Every record of `topic` once at least `expect` are there (duplicates included):
    (partition, key, value, headers)."""
    records: list[ConsumerRecord[bytes, bytes]] = []

    async def enough() -> bool:
        nonlocal records
        records = await read_topic(stack, topic)
        return len(records) >= expect

    await eventually(enough, timeout_s=timeout_s, interval_s=0.2, message=f"{expect} in {topic}")
    return [(r.partition, r.key, r.value or b"", dict(r.headers)) for r in records]


class TcpProxy:
    """A loopback TCP proxy in front of `upstream` ("host:port"): `stop()` refuses new
    connections and cuts the open ones (an outage for the clients behind it only), `start()`
    listens again on the same port. Bytes pass as they are (`_relay`). With `tls`, clients
    reach it over TLS only (a managed service's TLS in front of a plain one)."""

    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._tls = tls
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """The outage: refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
            self._writers.add(upstream_w)
            await self._relay(client_r, client_w, upstream_r, upstream_w)
        except (OSError, asyncio.IncompleteReadError, ExceptionGroup):
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()
            self._tasks.discard(task)

    async def _relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        """Both ways until either side closes."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_pipe(client_r, upstream_w))
            tg.create_task(_pipe(upstream_r, client_w))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.transport.abort()  # one side closed: the connection is over


class KafkaProxy(TcpProxy):
    """A TcpProxy in front of the broker that reads Kafka's frames, rewriting Metadata (above)."""

    async def _relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> None:
        pending: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, version)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._requests(client_r, upstream_w, pending))
            tg.create_task(self._responses(upstream_r, client_w, pending))

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: dict[int, tuple[int, int]],
    ) -> None:
        async for frame in _frames(reader):
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            pending[correlation] = (api_key, version)
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: dict[int, tuple[int, int]],
    ) -> None:
        async for frame in _frames(reader):
            (correlation,) = struct.unpack(">i", frame[:4])
            api_key, version = pending.pop(correlation, (-1, -1))
            if api_key == _METADATA_API_KEY:
                frame = frame[:4] + self._rewrite_metadata(version, frame[4:])
            writer.write(struct.pack(">i", len(frame)) + frame)
            await writer.drain()

    def _rewrite_metadata(self, version: int, body: bytes) -> bytes:
        response_type = getattr(metadata_protocol, f"MetadataResponse_v{version}")
        response = response_type.decode(body)
        response.brokers = [
            (broker[0], "127.0.0.1", self.port, *broker[3:]) for broker in response.brokers
        ]
        return bytes(response.encode())


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    with contextlib.suppress(asyncio.IncompleteReadError):
        while True:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            yield await reader.readexactly(size)
