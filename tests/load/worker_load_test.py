"""Locust load test of the router: `message_processing` records in, SENT statuses out.

Each Locust user produces `message_processing` records (the SPEC format, docs/contract.md section
3, key `conversation:{id}`, a W3C `traceparent` header) and times each one until the router has
reported it SENT (or later) on every requested channel in `message_status_updates`; that is what
the platform itself sees, read with one partition-assigned consumer per Locust process, O(1) per
status record (the mocks' `/__mock__/sent` lists everything they ever accepted, so polling it
costs more with every message). Two request types are reported to Locust:

- `kafka` `produce message_processing`: send -> Kafka's acknowledgement;
- `pipeline` `message_processing -> SENT`: send -> the last channel's SENT; a FAILED status, or
  no SENT within LOAD_TIMEOUT_S, is a failure.

Install and run (the `load` extra, also part of `dev`; tests/load/test_locust_file.py runs this
file headless against a router and the mocks in `make test`):

    .venv/bin/pip install -e '.[load]'
    eval "$(scripts/devstack env)"                         # the stack's addresses
    export CHAT4ALL_TOPICS_MESSAGE_PROCESSING=load-message-processing \\
           CHAT4ALL_TOPICS_MESSAGE_STATUS_UPDATES=load-message-status-updates \\
           CHAT4ALL_TOPICS_DLQ=load-message-processing-dlq \\
           KAFKA_CONSUMER_GROUP=load CHAT4ALL_REDIS_KEY_PREFIX=load: \\
           CHAT4ALL_MOCKS_WINDOWS=open                     # its recipients never wrote first
    .venv/bin/chat4all-workers topics ensure               # the topics above (and the others)
    .venv/bin/chat4all-workers run --roles router,whatsapp_mock,instagram_mock &   # the workers
    .venv/bin/locust -f tests/load/worker_load_test.py --headless -u 100 -r 20 -t 60s
    kill %1                                                 # SIGTERM drains the workers

The workers and Locust read the same variables, so one shell configures both. Only the router and
the mocks are needed (SENT comes from the router); add `webhooks` (and export
WHATSAPP_APP_SECRET / INSTAGRAM_APP_SECRET, which the mocks sign with) for the mocks' status
webhooks to arrive as DELIVERED and READ, as in production; with `--roles all` the status
updater also runs and warns about every status of these messages, which have no `messages` row.
Dedup markers stay in Redis for 24 h under the key prefix (`redis-cli --scan --pattern 'load:*'`
finds them).

Environment (defaults in brackets):
- KAFKA_BOOTSTRAP_SERVERS [127.0.0.1:9092]
- CHAT4ALL_TOPICS_MESSAGE_PROCESSING [message_processing], CHAT4ALL_TOPICS_MESSAGE_STATUS_UPDATES
  [message_status_updates]: the topics, named as the workers name them
- LOAD_CHANNELS [whatsapp,instagram]: the record's `channels`
- LOAD_CONVERSATIONS [1000]: conversation ids drawn from 1..N
- LOAD_RATE_PER_USER [1]: records per second per user (constant throughput), so -u sets the rate
- LOAD_TIMEOUT_S [30]: how long a record may take to be SENT on every channel

Locust runs on gevent, which monkey-patches sockets, selectors and threads; aiokafka needs a real
asyncio loop. So the Kafka side is one asyncio loop per Locust process in a real OS thread
(`_thread.start_new_thread` from before the patch), on a real epoll selector (also from before the
patch), whose host names are resolved with the original `socket.getaddrinfo` in that thread
instead of a thread pool (pool threads would be greenlets nobody runs there). Greenlets hand work
to that loop with `call_soon_threadsafe`, and the loop hands results back with gevent's
`loop.run_callback_threadsafe`; no lock or future is shared between the two worlds. Timings are
taken in the asyncio thread, so a busy gevent hub does not inflate them.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gevent
import gevent.event
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from gevent import monkey
from gevent.event import AsyncResult
from locust import User, constant_throughput, events, task
from locust.env import Environment
from locust.runners import MasterRunner

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC_IN = os.environ.get("CHAT4ALL_TOPICS_MESSAGE_PROCESSING", "message_processing")
TOPIC_STATUS = os.environ.get("CHAT4ALL_TOPICS_MESSAGE_STATUS_UPDATES", "message_status_updates")
CHANNELS = [c.strip() for c in os.environ.get("LOAD_CHANNELS", "whatsapp,instagram").split(",")]
CONVERSATIONS = int(os.environ.get("LOAD_CONVERSATIONS", "1000"))
RATE_PER_USER = float(os.environ.get("LOAD_RATE_PER_USER", "1"))
TIMEOUT_S = float(os.environ.get("LOAD_TIMEOUT_S", "30"))

DELIVERED = frozenset({"SENT", "DELIVERED", "READ"})  # SENT or later: the channel took it


@dataclass(frozen=True)
class Outcome:
    produce_ms: float  # send -> ack
    sent_ms: float  # send -> last channel SENT
    size: int
    error: Exception | None = None


@dataclass
class _Waiting:
    channels: set[str]
    done: asyncio.Future[float]  # the time the last channel was reported SENT


class KafkaBridge:
    """One asyncio loop in a real OS thread owning the producer and the status consumer."""

    def __init__(self) -> None:
        self._hub_loop = gevent.get_hub().loop  # the gevent loop of the calling (main) thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._producer: AIOKafkaProducer | None = None
        self._finished = gevent.event.Event()
        self._keepalive = self._hub_loop.async_()

    # -- called from greenlets ----------------------------------------------------------------

    def start(self, timeout_s: float = 60.0) -> None:
        # An active watcher, so that the hub keeps waiting for the other thread's callbacks
        # even when no greenlet has a timer or socket of its own ("would block forever").
        self._keepalive.start(lambda: None)
        ready: AsyncResult = AsyncResult()
        start_thread = monkey.get_original("_thread", "start_new_thread")
        start_thread(self._thread_main, (ready,))
        ready.get(timeout=timeout_s)  # raises what the thread could not do

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close the clients and end the thread (in-flight records are abandoned)."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._finished.wait(timeout=timeout_s)
        self._keepalive.stop()

    def deliver(self, doc: dict[str, Any], headers: list[tuple[str, bytes]]) -> Outcome:
        """Produce one record and wait (this greenlet only) until it is SENT everywhere."""
        assert self._loop is not None
        result: AsyncResult = AsyncResult()
        self._loop.call_soon_threadsafe(self._spawn, doc, headers, result.set)
        outcome: Outcome = result.get()
        return outcome

    # -- the asyncio thread ---------------------------------------------------------------------

    def _thread_main(self, ready: AsyncResult) -> None:
        epoll = monkey.get_original("selectors", "EpollSelector")
        loop = _RealResolverLoop(selector=epoll())
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:  # noqa: BLE001 - told to the greenlet waiting for start()
            self._hub_loop.run_callback_threadsafe(ready.set_exception, exc)
        finally:
            loop.close()
            self._hub_loop.run_callback_threadsafe(self._finished.set)

    async def _main(self, ready: AsyncResult) -> None:
        self._stopping = asyncio.Event()
        producer = AIOKafkaProducer(
            bootstrap_servers=KAFKA, acks="all", enable_idempotence=True, linger_ms=5
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=KAFKA, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await producer.start()
        try:
            await consumer.start()
            try:
                tps = await _partitions(TOPIC_STATUS)
                consumer.assign(tps)
                await consumer.seek_to_end(*tps)
                for tp in tps:  # resolve the positions now, before any record is produced
                    await consumer.position(tp)
                self._producer = producer
                self._hub_loop.run_callback_threadsafe(ready.set, None)
                async with asyncio.TaskGroup() as group:
                    reader = group.create_task(self._read_statuses(consumer))
                    await self._stopping.wait()
                    reader.cancel()
                    for pending in self._tasks:
                        pending.cancel()
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    def _spawn(
        self, doc: dict[str, Any], headers: list[tuple[str, bytes]], reply: Callable[..., None]
    ) -> None:
        handle = asyncio.get_running_loop().create_task(self._deliver(doc, headers, reply))
        self._tasks.add(handle)
        handle.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, doc: dict[str, Any], headers: list[tuple[str, bytes]], reply: Callable[..., None]
    ) -> None:
        assert self._producer is not None
        value = orjson.dumps(doc)
        key = f"conversation:{doc['conversation_id']}".encode()
        waiting = _Waiting(set(doc["channels"]), asyncio.get_running_loop().create_future())
        self._waiting[doc["message_id"]] = waiting
        started = time.perf_counter()
        produce_ms = sent_ms = 0.0
        error: Exception | None = None
        try:
            ack = await self._producer.send(TOPIC_IN, value, key=key, headers=headers)
            await ack
            produce_ms = (time.perf_counter() - started) * 1000
            async with asyncio.timeout(TIMEOUT_S):
                sent_ms = (await waiting.done - started) * 1000
        except TimeoutError:
            error = TimeoutError(f"not SENT on {sorted(waiting.channels)} within {TIMEOUT_S} s")
        except Exception as exc:  # noqa: BLE001 - FAILED, or Kafka's errors: reported to Locust
            error = exc
        finally:
            self._waiting.pop(doc["message_id"], None)
        outcome = Outcome(produce_ms, sent_ms, len(value), error)
        self._hub_loop.run_callback_threadsafe(reply, outcome)

    async def _read_statuses(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    self._apply(record.value, now)

    def _apply(self, value: bytes | None, now: float) -> None:
        try:
            update = orjson.loads(value or b"")
            waiting = self._waiting.get(str(update["message_id"]))
            channel, status = update["channel"], update["new_status"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        if waiting is None or waiting.done.done():
            return
        if status == "FAILED":
            waiting.done.set_exception(RuntimeError(f"FAILED on {channel}: {update}"))
        elif status in DELIVERED:
            waiting.channels.discard(channel)
            if not waiting.channels:
                waiting.done.set_result(now)


async def _partitions(topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise RuntimeError(f"topic {topic} does not exist (error {described['error_code']})")
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


class _RealResolverLoop(asyncio.SelectorEventLoop):
    """Resolves host names with the unpatched getaddrinfo, inline: the default executor's
    threads would be greenlets of a hub that never runs in this thread. A lookup blocks this
    loop briefly, and only when a connection is opened."""

    _getaddrinfo = staticmethod(monkey.get_original("socket", "getaddrinfo"))

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        return list(self._getaddrinfo(host, port, family, type, proto, flags))


_bridge: KafkaBridge | None = None


@events.init.add_listener
def _start_bridge(environment: Environment, **_: Any) -> None:
    global _bridge
    if isinstance(environment.runner, MasterRunner):
        return  # the master only aggregates; its workers produce
    _bridge = KafkaBridge()
    _bridge.start()


@events.quitting.add_listener
def _stop_bridge(**_: Any) -> None:
    if _bridge is not None:
        _bridge.stop()


def message(conversation: int) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "conversation_id": conversation,
        "sender_id": 7,
        "sender_username": "locust",
        "payload": {"type": "text", "content": f"load {secrets.token_hex(8)}"},
        "channels": CHANNELS,
        "recipients": {
            "whatsapp": f"+5511{conversation:09d}",
            "instagram": f"1784{conversation:013d}",
        },
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }


class MessageProcessingUser(User):
    """Produces LOAD_RATE_PER_USER records a second, each timed until SENT on every channel."""

    wait_time = constant_throughput(RATE_PER_USER)

    @task
    def send_message(self) -> None:
        assert _bridge is not None, "the Kafka bridge did not start"
        doc = message(random.randint(1, CONVERSATIONS))
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01".encode()
        outcome = _bridge.deliver(doc, [("traceparent", traceparent)])
        fire = self.environment.events.request.fire
        produced = outcome.produce_ms > 0
        fire(
            request_type="kafka",
            name="produce message_processing",
            response_time=outcome.produce_ms,
            response_length=outcome.size,
            exception=None if produced else outcome.error,
            context={},
        )
        if produced:
            fire(
                request_type="pipeline",
                name="message_processing -> SENT",
                response_time=outcome.sent_ms,
                response_length=outcome.size,
                exception=outcome.error,
                context={},
            )
