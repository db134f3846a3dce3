"""The webhooks floor: the leanest server that does the webhooks role's work for a status webhook,
and nothing else. bench/webhooks.py runs it as a subprocess, under the same load as the role.

    python bench/webhook_floor.py SETTINGS_JSON   (prints READY once listening)

Per POST: the signature (HMAC-SHA256 of the body with the app secret, compared in constant
time), the JSON parse and the read of each status (the phone number, the callback data, the
status and its time), then per status the router's dedup marker given the provider's word (the
same EVALSHA of the same Lua script the role issues, delivery/markers.py) and ONE
`message_status_updates` record produced with Kafka's ack awaited, then 200. No routing table,
no limits, timeouts, metrics, tracing, logging or accounts: an asyncio.Protocol with httptools'
request parser, answering each request in the order it came. The work of all requests completed
in one event-loop iteration goes out together: one Redis pipeline for their verdicts (through the
role's own Redis path, the auto-pipeline on its connection: autopipeline.py), then their
records handed to aiokafka's producer (acks=all, idempotent, linger 5 ms, the key's partition
hashed once per key: as the role's) and their answers written once every ack of the iteration is
in.

What it pays is what any server of this work pays on this I/O code (httptools, hmac, orjson,
our Redis auto-pipeline, aiokafka) and this interpreter: the role's cost above it is its own.
Until 2026-12-07 its verdicts went through redis-py's Pipeline, dearer than the role's path, and
until a later stop of that day its producer hashed every record's key (aiokafka's murmur2, in
Python; the role remembers each key's): a floor must do its I/O as cheaply as the role can, or
the role's ratio to it flatters the role.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import httptools
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from chat4all_workers import collector
from chat4all_workers.autopipeline import AutoPipeline
from chat4all_workers.background import Background, Spawn
from chat4all_workers.config import KafkaSettings
from chat4all_workers.delivery.markers import _VERDICT
from chat4all_workers.kafka.partitioning import KeyPartitioner

_STATUSES = {"sent": "SENT", "delivered": "DELIVERED", "read": "READ", "failed": "FAILED"}
_OK = b'{"ok":true}'
_ANSWER_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_OK)).encode()
    + b"\r\n\r\n"
    + _OK
)
_ANSWER_401 = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
_SIGNATURE = b"x-hub-signature-256"

# (message_id, conversation_id, value) per status of one request
_Work = list[tuple[str, int, bytes, str]]


class Floor:
    def __init__(self, doc: dict[str, Any], tasks: asyncio.TaskGroup, spawn: Spawn) -> None:
        self.secret = doc["secret"].encode()
        self.phone = doc["phone"]
        self._topic = doc["topic"]
        self._prefix = doc["redis_prefix"]
        self._tasks = tasks
        self.redis = aioredis.Redis.from_url(doc["redis_url"])
        self.pipe = AutoPipeline(self.redis, spawn=spawn)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=doc["kafka"],
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=KafkaSettings().max_batch_bytes,  # the role's producer settings
            partitioner=KeyPartitioner(),  # and its partitioner (murmur2 once per key)
        )
        self._sha = hashlib.sha1(_VERDICT.encode()).hexdigest()
        self._pending: list[tuple[_Conn, _Work]] = []

    def add(self, conn: _Conn, work: _Work) -> None:
        self._pending.append((conn, work))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._tasks.create_task(self._store(batch))

    async def _store(self, batch: list[tuple[_Conn, _Work]]) -> None:
        verdicts: list[tuple[str | int, ...]] = []
        for _, work in batch:
            for message_id, _, _, provider_id in work:
                key = f"{self._prefix}message:dedup:{message_id}:whatsapp"
                verdicts.append(("EVALSHA", self._sha, 1, key, provider_id, 86_400))
        await self.pipe.execute_many(verdicts)
        acks = []
        for _, work in batch:
            for _, conversation_id, value, _ in work:
                kafka_key = f"conversation:{conversation_id}".encode()
                acks.append(await self.producer.send(self._topic, value, key=kafka_key))
        await asyncio.gather(*acks)
        for conn, _ in batch:
            conn.answer(_ANSWER_200)


class _Conn(asyncio.Protocol):
    def __init__(self, floor: Floor) -> None:
        self._floor = floor
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._signature = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _SIGNATURE:
            self._signature = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        expected = (
            b"sha256=" + hmac.new(self._floor.secret, body, hashlib.sha256).hexdigest().encode()
        )
        if not hmac.compare_digest(expected, self._signature):
            self.answer(_ANSWER_401)
            return
        self._floor.add(self, statuses(orjson.loads(body), self._floor.phone))

    def answer(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def statuses(doc: dict[str, Any], phone: str) -> _Work:
    """Each status of our phone number: the record the role would produce for it."""
    work = []
    for entry in doc["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if value["metadata"]["phone_number_id"] != phone:
                continue
            for item in value.get("statuses", ()):
                ours = orjson.loads(item["biz_opaque_callback_data"])
                at = datetime.fromtimestamp(int(item["timestamp"]), UTC)
                record = {
                    "message_id": ours["message_id"],
                    "conversation_id": ours["conversation_id"],
                    "channel": "whatsapp",
                    "new_status": _STATUSES[item["status"]],
                    "timestamp": at.isoformat(),
                    "details": {"provider_message_id": item["id"]},
                }
                work.append(
                    (ours["message_id"], ours["conversation_id"], orjson.dumps(record), item["id"])
                )
    return work


async def main(doc: dict[str, Any]) -> None:
    collector.tune()  # as `chat4all-workers run` and the role beside it
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with asyncio.TaskGroup() as tasks, Background() as background:
        floor = Floor(doc, tasks, background.spawn)
        await floor.producer.start()
        try:
            await floor.redis.script_load(_VERDICT)
            server = await loop.create_server(
                lambda: _Conn(floor), "127.0.0.1", doc["port"], backlog=1024
            )
            collector.freeze()
            sys.stdout.write("READY\n")
            sys.stdout.flush()
            await stop.wait()
            server.close()
        finally:
            await floor.producer.stop()
            floor.pipe.close()
            await floor.redis.aclose()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(orjson.loads(sys.argv[1])))
