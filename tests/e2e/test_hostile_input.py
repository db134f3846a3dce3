"""Hostile input to every consumer (issues 8 and 15): arbitrary bytes, tombstones, every field of
every consumed format broken in turn (wrong types, integers outside their PostgreSQL column, bad
UUIDs and RFC 3339 timestamps, huge fields), unicode edge cases and hostile filenames.

Whatever arrives, each record ends in the DLQ with a short reason naming the field it broke
(`dlq.source` naming the role and `dlq.original_partition`/`dlq.original_offset` pointing back at
it; a tombstone's copy is a tombstone) or, for the backfill worker, in the dead list
`{prefix}fallback:message_queue:dead`; or, when it is valid after all, it is applied. The role
keeps running (no crash, no restart), logs nothing above WARNING for bad input, and never logs a
secret. The router's fuzz runs against a real `chat4all-workers run` process (its /readyz must
stay 200) fed batch after batch; `HOSTILE_EXAMPLES=200` makes it the 2,000-record run of issue 15.

Each property test is a sync function: every example runs on a fresh event loop, and the
examples of one test share one isolated deployment, so records are identified by the
(partition, offset) the producer returned. One deterministic test per consumer lists concrete
nasty cases for a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from chat4all_workers.meta.limits import INSTAGRAM_TEXT_BYTES as TEXT_LIMIT_BYTES
from chat4all_workers.meta.limits import WHATSAPP_TEXT_CHARACTERS as TEXT_LIMIT_CHARACTERS
from harness.deployment import Deployment
from harness.topics import partitions_of, read_topic
from tests.e2e.hostile import (
    BAD_INPUT_TYPES,
    EDGE_STRINGS,
    EXAMPLES,
    FILENAMES,
    HUGE,
    HYPOTHESIS,
    IG_TOKEN,
    LONE_SURROGATES,
    MERGE_REQUIRED,
    MERGE_WRONG,
    MESSAGE_HOSTILE_FIELDS,
    MESSAGE_REQUIRED,
    MESSAGE_WRONG,
    MIB,
    NASTY_HEADERS,
    STATUS_REQUIRED,
    STATUS_WRONG,
    STATUSES,
    WA_TOKEN,
    Case,
    DeadLetter,
    Sent,
    assert_dead_lettered,
    assert_safe_key,
    broken_document,
    edge_text,
    encode,
    feed_role,
    file_dead_letter,
    hostile_settings,
    json_values,
    junk_bytes,
    merge_doc,
    message_doc,
    not_a,
    outside_bigint,
    produce_each,
    record_headers,
    run_drained,
    secrets_of,
    status_doc,
    watch_logs,
)
from tests.roles.uploads import seed_upload
from tests.support import FakeChannelApi

pytestmark = [
    pytest.mark.stack,
    # a property test's time grows with its examples: 300 s for the default 10
    pytest.mark.timeout(max(300, 30 * EXAMPLES)),
    # a failing example of 1 MiB records is shrunk and shown; its repr is big, and that is fine
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

T = TypeVar("T")
KEYS = st.one_of(st.none(), st.binary(max_size=40), st.just(b"conversation:42"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One example on its own event loop (not the session loop pytest-asyncio keeps)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coro)


# -- status_updater -------------------------------------------------------------------------------


@st.composite
def status_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["junk", "broken", "hostile_valid"]))
    key = draw(KEYS)
    if kind == "junk":
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    if kind == "broken":
        broken = draw(
            broken_document(
                status_doc(message_id=str(draw(st.uuids()))),
                STATUS_WRONG,
                STATUS_REQUIRED,
                ["details", "note"],
            )
        )
        return Case(
            key, broken.value, headers=draw(record_headers()), field=broken.field, also=broken.also
        )
    # Well-typed, but with hostile strings: applied, or rejected with a reason.
    doc = status_doc(
        message_id=str(draw(st.uuids())),
        channel=draw(st.sampled_from(["whatsapp", "instagram"])),
        new_status=draw(st.sampled_from(STATUSES)),
        conversation_id=draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        details={"reason": draw(edge_text()), "n": draw(json_values())},
        timestamp=draw(
            st.one_of(
                st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
                st.sampled_from(
                    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-02-30"]
                ),
            )
        ),
    )
    value = encode(doc, draw(st.sampled_from(["ascii", "utf8"])))
    return Case(key, value, must_reject=False, headers=draw(record_headers()))


# Text that does not compress: too long for a btree index entry even after TOAST compression.
NOISE = "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(4000))

STATUS_CASES: list[Case] = [
    *[Case(b"k", b"junk", headers=h, label="nasty headers") for h in NASTY_HEADERS],
    Case(b"k", None, label="tombstone (no value at all)"),
    Case(b"k", b"", label="empty"),
    Case(b"\xff\x00", b"\x80\x81\xfe\xff", label="invalid UTF-8"),
    Case(None, b"[1, 2, 3]", label="a list"),
    Case(None, b'"SENT"', label="a string"),
    Case(None, b"{" * 100_000, label="deep nesting"),
    Case(
        None, orjson.dumps(status_doc(message_id=42)), label="message_id an int", field="message_id"
    ),
    Case(None, orjson.dumps(status_doc(message_id="not-a-uuid")), label="message_id not a uuid"),
    Case(None, orjson.dumps(status_doc(conversation_id="42")), label="conversation_id a string"),
    Case(None, orjson.dumps(status_doc(conversation_id=True)), label="conversation_id a bool"),
    Case(None, orjson.dumps(status_doc(conversation_id=4.2)), label="conversation_id a float"),
    Case(None, orjson.dumps(status_doc(channel=["whatsapp"])), label="channel a list"),
    Case(None, orjson.dumps(status_doc(new_status="sent")), label="status in lower case"),
    Case(None, orjson.dumps(status_doc(new_status="\u202eSENT")), label="status with RTL"),
    Case(None, orjson.dumps(status_doc(details=[1])), label="details a list"),
    Case(None, orjson.dumps(status_doc(details=0)), label="details zero (falsy, not an object)"),
    Case(None, orjson.dumps(status_doc(details="")), label="details empty string"),
    Case(None, orjson.dumps(status_doc(timestamp=12345)), label="timestamp a number"),
    Case(None, orjson.dumps(status_doc(timestamp="yesterday")), label="timestamp not ISO"),
    Case(None, b'{"message_id": "\\ud800", "conversation_id": 1}', label="lone surrogate"),
    Case(
        None,
        encode(status_doc(channel="wa\ud800"), "ascii"),
        label="lone surrogate in the channel",
    ),
    Case(
        None,
        encode(status_doc(channel="wa\udfff"), "utf8"),
        label="raw surrogate bytes (invalid UTF-8)",
    ),
    Case(None, orjson.dumps(status_doc(channel="a\x00b")), False, "NUL in the channel"),
    Case(None, orjson.dumps(status_doc(details={"x": "\x00"})), False, "NUL in details"),
    Case(None, orjson.dumps(status_doc(channel="x" * 10_000)), False, "10 kB channel"),
    Case(None, orjson.dumps(status_doc(channel=NOISE)), False, "incompressible 12 kB channel"),
    Case(None, orjson.dumps(status_doc(channel="\u202e\U0001f4a5")), False, "RTL + emoji channel"),
    Case(None, orjson.dumps(status_doc(details={"c": "\U0001f4a9" * (HUGE // 8)})), False, "1 MiB"),
    Case(
        None,
        orjson.dumps(status_doc(timestamp="0001-01-01T00:00:00+14:00")),
        False,
        "timestamp before year 1 in UTC",
    ),
    Case(
        None,
        orjson.dumps(status_doc(timestamp="9999-12-31T23:59:59-12:00")),
        False,
        "timestamp after year 9999 in UTC",
    ),
    Case(None, orjson.dumps(status_doc(conversation_id=2**64 - 1)), False, "u64 conversation"),
    Case(
        None,
        orjson.dumps(status_doc(conversation_id=2**63)),
        label="bigint+1",
        field="conversation_id",
    ),
    Case(None, orjson.dumps(status_doc(channel="sms")), label="unknown channel", field="channel"),
    Case(None, orjson.dumps(status_doc(timestamp="2026-11-28T10:30:00")), field="timestamp"),
    Case(None, orjson.dumps(status_doc(timestamp="2026-11-28")), field="timestamp"),
]


async def status_updater_body(deployment: Deployment, cases: Sequence[Case]) -> None:
    settings = hostile_settings(deployment)
    topic = deployment.topics["message_status_updates"]
    sent, letters, logs = await feed_role(deployment, settings, "status_updater", topic, cases)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for case, record in zip(cases, sent, strict=True):
            if case.must_reject or (record.topic, record.partition, record.offset) in letters:
                assert_dead_lettered(letters, record, "status_updater", case.field, case.also)
                continue
            doc = orjson.loads(record.value or b"")
            applied = await conn.fetchval(
                """SELECT count(*) FROM message_status_history
                   WHERE message_id = $1 AND channel = $2 AND status = $3""",
                uuid.UUID(doc["message_id"]),
                doc["channel"],
                doc["new_status"],
            )
            assert applied == 1, f"neither applied nor dead-lettered: {case.label}"
    finally:
        await conn.close()
    logs.check(secrets_of(settings))


def test_status_updater_dead_letters_each_nasty_case(deployment: Deployment) -> None:
    run(status_updater_body(deployment, STATUS_CASES))


@HYPOTHESIS
@given(cases=st.lists(status_cases(), min_size=1, max_size=20))
def test_status_updater_survives_arbitrary_records(
    deployment: Deployment, cases: list[Case]
) -> None:
    run(status_updater_body(deployment, cases))


def test_status_updater_dead_letters_a_record_at_kafkas_size_limit(
    deployment: Deployment,
) -> None:
    """A record as large as Kafka accepts cannot go to the DLQ with its headers added; it must
    still end somewhere, without crashing the role."""
    value = at_size_limit()
    run(status_updater_body(deployment, [Case(b"k", value, label="1 MiB at the limit")]))


def at_size_limit() -> bytes:
    """Junk exactly as big as the default max_request_size lets a producer send (no headers)."""
    size = MIB - 200
    while DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", b"x" * (size + 1), []) <= MIB:
        size += 1
    return b"x" * size


# -- merge ----------------------------------------------------------------------------------------


@st.composite
def merge_requests(draw: st.DrawFn) -> Case:
    key = draw(KEYS)
    if draw(st.booleans()):
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    base = merge_doc(upload_id=str(draw(st.uuids())))
    broken = draw(broken_document(base, MERGE_WRONG, MERGE_REQUIRED, ["filename", "x"]))
    return Case(
        key, broken.value, headers=draw(record_headers()), field=broken.field, also=broken.also
    )


def storable_filenames() -> st.SearchStrategy[str]:
    """Filenames PostgreSQL can hold (no NUL, no surrogates): the API stored them as given."""
    return st.one_of(
        st.sampled_from(FILENAMES),
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300),
        st.text(alphabet="./\\\x01\x1f\x7f\x85 a", max_size=20),
    )


MERGE_CASES: list[Case] = [
    *[Case(b"k", b"junk", headers=h, label="nasty headers") for h in NASTY_HEADERS],
    Case(b"k", None, label="tombstone"),
    Case(b"k", b"\x00\xff", label="binary"),
    Case(None, b"{}", label="empty object"),
    Case(None, orjson.dumps(merge_doc(upload_id=None)), label="upload_id null"),
    Case(None, orjson.dumps(merge_doc(upload_id=["x"])), label="upload_id a list"),
    Case(None, orjson.dumps(merge_doc(upload_id="../../etc")), label="upload_id a path"),
    Case(None, orjson.dumps(merge_doc(total_chunks="3")), label="total_chunks a string"),
    Case(None, orjson.dumps(merge_doc(total_chunks=0)), label="total_chunks zero"),
    Case(None, orjson.dumps(merge_doc(total_chunks=-1)), label="total_chunks negative"),
    Case(None, orjson.dumps(merge_doc(total_chunks=True)), label="total_chunks a bool"),
    Case(None, orjson.dumps(merge_doc(total_chunks=2**64 - 1)), label="unknown upload, u64"),
    Case(None, orjson.dumps(merge_doc(filename="../" * 1000)), label="unknown upload, hostile"),
    Case(None, encode(merge_doc(filename="\ud800"), "ascii"), label="lone surrogate filename"),
    Case(None, orjson.dumps(merge_doc(x="\U0001f4a9" * (HUGE // 8))), label="1 MiB field"),
    Case(None, orjson.dumps(merge_doc(total_chunks=2**31)), field="total_chunks"),
    Case(None, orjson.dumps(merge_doc(filename=["a.pdf"])), field="filename"),
    Case(None, orjson.dumps(merge_doc(timestamp="soon")), field="timestamp"),
]


async def seed_hostile_uploads(deployment: Deployment, filenames: Sequence[str]) -> list[uuid.UUID]:
    conn = await asyncpg.connect(deployment.database_url)
    try:
        async with deployment.stack.s3_client() as s3:
            return [
                await seed_upload(conn, s3, deployment.bucket, [b"chunk %d" % n], filename=name)
                for n, name in enumerate(filenames)
            ]
    finally:
        await conn.close()


async def merge_body(
    deployment: Deployment, cases: Sequence[Case], filenames: Sequence[str] = ()
) -> None:
    settings = hostile_settings(deployment)
    uploads = await seed_hostile_uploads(deployment, filenames)
    requests = [
        Case(str(upload).encode(), orjson.dumps(merge_doc(upload_id=str(upload), filename=name)))
        for upload, name in zip(uploads, filenames, strict=True)
    ]
    sent, letters, logs = await feed_role(
        deployment, settings, "merge", deployment.topics["file_merge_requests"], [*cases, *requests]
    )
    for case, record in zip(cases, sent, strict=False):
        assert_dead_lettered(letters, record, "merge", case.field, case.also)
    await check_merged(deployment, uploads, sent[len(cases) :], letters)
    logs.check(secrets_of(settings))


async def check_merged(
    deployment: Deployment,
    uploads: Sequence[uuid.UUID],
    requests: Sequence[Sent],
    letters: dict[tuple[str, int, int], Any],
) -> None:
    """Each upload merged to a safe key (and the object is there), or FAILED and dead-lettered."""
    conn = await asyncpg.connect(deployment.database_url)
    try:
        async with deployment.stack.s3_client() as s3:
            for n, (upload, request) in enumerate(zip(uploads, requests, strict=True)):
                row = await conn.fetchrow(
                    "SELECT status, storage_key, filename, error FROM files WHERE id = $1", upload
                )
                assert row is not None
                if row["status"] == "FAILED":
                    assert row["error"], row
                    assert_dead_lettered(letters, request, "merge")
                    continue
                assert row["status"] == "COMPLETED", (row["filename"], row["status"])
                assert_safe_key(row["storage_key"], upload)
                stat = await s3.stat_object(deployment.bucket, row["storage_key"])
                assert stat.size == len(b"chunk %d" % n)  # what seed_hostile_uploads wrote
    finally:
        await conn.close()


def test_merge_dead_letters_each_nasty_request(deployment: Deployment) -> None:
    run(merge_body(deployment, MERGE_CASES))


def test_merge_sanitises_each_hostile_filename(deployment: Deployment) -> None:
    run(merge_body(deployment, [], FILENAMES))


@HYPOTHESIS
@given(
    cases=st.lists(merge_requests(), min_size=1, max_size=12),
    filenames=st.lists(storable_filenames(), max_size=4),
)
def test_merge_survives_arbitrary_requests_and_filenames(
    deployment: Deployment, cases: list[Case], filenames: list[str]
) -> None:
    run(merge_body(deployment, cases, filenames))


def test_merge_dead_letters_an_absurd_chunk_count_quickly(deployment: Deployment) -> None:
    """An upload whose row does not declare its chunk count, asked to merge 2**62 chunks."""

    async def body() -> None:
        (upload,) = await seed_hostile_uploads(deployment, ["a.pdf"])
        conn = await asyncpg.connect(deployment.database_url)
        try:
            await conn.execute("UPDATE files SET total_chunks = NULL WHERE id = $1", upload)
        finally:
            await conn.close()
        case = Case(None, orjson.dumps(merge_doc(upload_id=str(upload), total_chunks=2**62)))
        await merge_body(deployment, [case])

    run(body())


# -- backfill -------------------------------------------------------------------------------------

BAD_TOPIC_NAMES = (
    "",
    ".",
    "..",
    "../etc",
    "a b",
    "\u00e9",
    "x" * 250,
    "t\x00",
    "__consumer_offsets",
)


def envelope(topic: Any, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "topic": topic,
        "key": "conversation:42",
        "value": {"message_id": str(uuid.uuid4()), "conversation_id": 42},
        "headers": {"traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"},
    }
    doc.update(changes)
    return doc


def bare_wrong() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "conversation_id": st.one_of(
            not_a(int, str),
            outside_bigint(),
            st.text(max_size=30).filter(lambda t: not t.lstrip("-").isdecimal()),
        )
    }


Item = tuple[bytes, str | None]  # an item, and the field its reason must name


@st.composite
def backfill_items(draw: st.DrawFn, topic: str) -> Item:
    kind = draw(st.sampled_from(["junk", "envelope", "bare"]))
    if kind == "junk":
        return draw(junk_bytes()), None
    if kind == "bare":
        base = {"message_id": str(draw(st.uuids())), "conversation_id": 42}
        bare = draw(broken_document(base, bare_wrong(), ["message_id", "conversation_id"]))
        return bare.value, bare.field
    wrong: dict[str, st.SearchStrategy[Any]] = {
        "topic": st.one_of(not_a(str), st.sampled_from(BAD_TOPIC_NAMES)),
        "key": not_a(str).filter(lambda v: v is not None),
        "headers": st.one_of(
            not_a(dict).filter(lambda v: v is not None),
            st.dictionaries(st.text(max_size=5), not_a(str), min_size=1, max_size=3),
        ),
    }
    broken = draw(broken_document(envelope(topic), wrong, ["topic", "value"], ["note"]))
    return broken.value, broken.field


def backfill_cases(topic: str) -> list[Item]:
    nasty = [
        b"",
        b"\x00\x01\x02",
        b"\xff\xfe",
        b"null",
        b"42",
        b'"message"',
        b"[]",
        b"{}",
        b"{" * 10_000,
        b'{"message_id": "\\ud800", "conversation_id": "\\udfff"}',
        orjson.dumps({"message_id": "m"}),
        orjson.dumps({"message_id": "m", "conversation_id": None}),
        orjson.dumps({"message_id": "m", "conversation_id": [1]}),
        orjson.dumps({"conversation_id": 1}),
        orjson.dumps(envelope(7)),
        orjson.dumps(envelope(None)),
        orjson.dumps(envelope(topic, key=42)),
        orjson.dumps(envelope(topic, key=["k"])),
        orjson.dumps(envelope(topic, headers=["h", "v"])),
        orjson.dumps(envelope(topic, headers={"h": 1})),
        orjson.dumps(envelope(topic, headers={"h": None})),
        orjson.dumps({"topic": topic, "key": "k"}),  # no value
        *[orjson.dumps(envelope(name)) for name in BAD_TOPIC_NAMES],
        # too big for a Kafka record: a 1 MiB key, a 1 MiB key and value
        orjson.dumps(envelope(topic, key="\U0001f4a9" * (MIB // 4 + 10))),
        orjson.dumps({"message_id": "m", "conversation_id": "\U0001f4a9" * (HUGE // 4)}),
    ]
    named = [
        (orjson.dumps({"message_id": "m", "conversation_id": 2**63}), "conversation_id"),
        (orjson.dumps({"message_id": "m", "conversation_id": "42x"}), "conversation_id"),
        (orjson.dumps(envelope("a b")), "topic"),
        (orjson.dumps(envelope(topic, headers={"h": 1})), "headers.h"),
    ]
    return [*((item, None) for item in nasty), *named]


async def backfill_body(deployment: Deployment, cases: Sequence[Item]) -> None:
    items = [item for item, _ in cases]
    settings = hostile_settings(deployment)
    queue = f"{deployment.redis_prefix}fallback:message_queue"
    redis = aioredis.from_url(deployment.stack.redis_url)
    try:
        before = await redis.llen(f"{queue}:dead")
        await redis.rpush(queue, *items)
        with watch_logs() as logs:
            await run_drained(settings, "backfill")
        dead = [orjson.loads(raw) for raw in await redis.lrange(f"{queue}:dead", before, -1)]
        assert await redis.llen(queue) == 0
        assert [k async for k in redis.scan_iter(match=f"{queue}:processing:*", count=10_000)] == []
    finally:
        await redis.aclose()
    assert all(isinstance(d.get("reason"), str) and d["reason"] for d in dead), dead
    buried = Counter(d["item"] for d in dead)
    pushed = Counter(item.decode("utf-8", errors="replace") for item in items)
    assert buried == pushed, f"not buried: {list(pushed - buried)!r:.300}"
    reasons: dict[str, list[str]] = {}
    for d in dead:
        reasons.setdefault(d["item"], []).append(d["reason"])
    for item, field in cases:
        if field is not None:
            said = reasons[item.decode("utf-8", errors="replace")]
            assert any(field in r for r in said), f"no reason names {field!r}: {said}"
    logs.check(secrets_of(settings))


def test_backfill_buries_each_nasty_item_with_a_reason(deployment: Deployment) -> None:
    run(backfill_body(deployment, backfill_cases(deployment.topics["message_processing"])))


@HYPOTHESIS
@given(data=st.data())
def test_backfill_survives_arbitrary_items(deployment: Deployment, data: st.DataObject) -> None:
    topic = deployment.topics["message_processing"]
    items = data.draw(st.lists(backfill_items(topic), min_size=1, max_size=20))
    run(backfill_body(deployment, items))


# -- outbox -------------------------------------------------------------------------------------

JSONB_TEXT = st.characters(codec="utf-8", exclude_characters="\x00")  # jsonb holds no NUL


def jsonb_payloads() -> st.SearchStrategy[str]:
    """JSON texts jsonb holds, with what trips a JSON library: integers beyond 64 bits, numbers
    beyond a double, deep nesting, big strings, a conversation_id that is no id."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(JSONB_TEXT, max_size=30),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(JSONB_TEXT, max_size=8), inner)
        ),
        max_leaves=12,
    )
    return st.one_of(values.map(json.dumps), st.sampled_from(NASTY_PAYLOADS))


NASTY_PAYLOADS = (
    '{"a": 1e400}',
    "[-1e400]",
    '{"conversation_id": 1e400, "message_id": "m"}',
    '{"conversation_id": 12345678901234567890123, "n": 98765432109876543210}',
    '{"conversation_id": {"x": 1}}',
    '{"conversation_id": [1, 2]}',
    '{"conversation_id": true}',
    '{"conversation_id": null}',
    "[" * 200 + "]" * 200,
    '"just a string"',
    "42",
    json.dumps({"c": "\U0001f4a9" * 100_000}, ensure_ascii=False),
    json.dumps({"\u202e": "\ufeff\u2028", "e\u0301": "\U0010ffff"}),
)
EVENT_TYPES = st.one_of(
    st.sampled_from(["message.created", "message.updated", "file.uploaded", "conversation.x"]),
    st.text(JSONB_TEXT, max_size=40),
)


async def outbox_body(deployment: Deployment, events: Sequence[tuple[str, str, str]]) -> None:
    """Insert (event_type, aggregate_id, payload) rows; every one must be published, its value
    the payload's text exactly as PostgreSQL prints it."""
    settings = hostile_settings(deployment)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        ids = [
            await conn.fetchval(
                """INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload)
                   VALUES ($1, 'conversation', $2, $3, $4::jsonb) RETURNING id""",
                uuid.uuid4(),
                aggregate_id,
                event_type,
                payload,
            )
            for event_type, aggregate_id, payload in events
        ]
        with watch_logs() as logs:
            # a line of our own: a clean outbox run may log nothing, and the watch must see one
            logging.getLogger("chat4all_workers.tests").info("%d hostile outbox events", len(ids))
            await run_drained(settings, "outbox")
        rows = await conn.fetch(
            "SELECT id, published, payload::text AS text FROM outbox_events WHERE id = ANY($1)", ids
        )
    finally:
        await conn.close()
    published: dict[str, bytes | None] = {}
    for name in ("message_processing", "message_events", "file_events", "conversation_events"):
        for record in await read_topic(deployment.stack, deployment.topics[name]):
            published[dict(record.headers)["event_id"].decode()] = record.value
    for record in await read_topic(deployment.stack, deployment.topics["default_events"]):
        published[dict(record.headers)["event_id"].decode()] = record.value
    assert all(row["published"] for row in rows)
    for row in rows:
        assert published[str(row["id"])] == row["text"].encode(), row["text"][:200]
    logs.check(secrets_of(settings))


def test_outbox_publishes_each_nasty_payload_unchanged(deployment: Deployment) -> None:
    run(outbox_body(deployment, [("message.created", "42", p) for p in NASTY_PAYLOADS]))


@HYPOTHESIS
@given(
    events=st.lists(
        st.tuples(EVENT_TYPES, st.text(JSONB_TEXT, max_size=50), jsonb_payloads()),
        min_size=1,
        max_size=20,
    )
)
def test_outbox_survives_arbitrary_payloads(
    deployment: Deployment, events: list[tuple[str, str, str]]
) -> None:
    run(outbox_body(deployment, events))


# -- router ---------------------------------------------------------------------------------------

# Valid in form, but nothing can be sent: a file that does not exist, no recipient at all.
ROUTER_WRONG: dict[str, st.SearchStrategy[Any]] = {
    **MESSAGE_WRONG,
    "payload": st.one_of(
        MESSAGE_WRONG["payload"],
        st.fixed_dictionaries({"type": st.just("file"), "file_id": st.uuids().map(str)}),
    ),
    "recipients": st.one_of(
        MESSAGE_WRONG["recipients"],
        st.just({}),
        st.just({"whatsapp": "", "instagram": ""}),
        st.just({"whatsapp": None, "instagram": None}),
    ),
}


@st.composite
def router_cases(draw: st.DrawFn) -> Case:
    key = draw(KEYS)
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    if kind == 1:  # a tombstone needs a key (Kafka takes no record without both)
        return Case(key or b"k", None, label="tombstone", field="tombstone")
    base = message_doc(message_id=str(draw(st.uuids())))
    broken = draw(broken_document(base, ROUTER_WRONG, MESSAGE_REQUIRED, MESSAGE_HOSTILE_FIELDS))
    return Case(
        key, broken.value, headers=draw(record_headers()), field=broken.field, also=broken.also
    )


def doc_case(field: str, **changes: Any) -> Case:
    return Case(None, orjson.dumps(message_doc(**changes)), label=f"{field} {changes}", field=field)


ROUTER_CASES: list[Case] = [
    *[Case(b"k", b"junk", headers=h, label="nasty headers") for h in NASTY_HEADERS],
    Case(b"k", None, label="tombstone", field="tombstone"),
    Case(b"conversation:1", b"\xde\xad\xbe\xef", label="binary", field="not UTF-8"),
    Case(None, b"{}", label="empty object", field="message_id"),
    Case(None, b"[]", label="a list", field="not a JSON object"),
    doc_case("message_id", message_id=1),
    doc_case("message_id", message_id="\U0001f4a5"),
    doc_case("message_id", message_id="{3f2504e0-4f89-11d3-9a0c-0305e82c3301}"),
    doc_case("conversation_id", conversation_id="42"),
    doc_case("conversation_id", conversation_id=None),
    doc_case("conversation_id", conversation_id=2**63),
    doc_case("conversation_id", conversation_id=2**64 - 1),
    Case(None, encode(message_doc(conversation_id=-(2**63) - 1), "ascii"), field="conversation_id"),
    Case(None, encode(message_doc(sender_id=2**70), "ascii"), field="sender_id"),
    doc_case("sender_id", sender_id=False),
    doc_case("sender_username", sender_username=42),
    doc_case("sender_username", sender_username=["ana"]),
    doc_case("sender_username", sender_username={"name": "ana"}),
    doc_case("sender_username", sender_username="a" * 256),
    doc_case("created_at", created_at=1764325800),
    doc_case("created_at", created_at="yesterday"),
    doc_case("created_at", created_at="2026-11-28"),
    doc_case("created_at", created_at="2026-11-28T10:30:00"),
    doc_case("created_at", created_at="2026-02-30T10:30:00Z"),
    doc_case("created_at", created_at="0001-01-01T00:00:00+14:00"),
    doc_case("created_at", created_at="2026-11-28T10:30:00Z" * 50_000),  # a 1 MiB string
    doc_case("payload", payload="hello"),
    doc_case("payload", payload={"type": "video"}),
    doc_case("payload", payload={"type": "text"}),
    doc_case("payload", payload={"type": "text", "content": 5}),
    doc_case("payload", payload={"type": "file", "file_id": "../../x"}),
    doc_case("payload", payload={"type": "file", "file_id": str(uuid.uuid4())}),
    doc_case("channels", channels=[]),
    doc_case("channels", channels="whatsapp"),
    doc_case("channels", channels=["sms"]),
    doc_case("channels", channels=["whatsapp", None]),
    doc_case("channels", channels=["whatsapp", "\u202ewhatsapp"]),
    doc_case("channels", channels=["WhatsApp"]),
    doc_case("recipients", recipients=["+55"]),
    doc_case("recipients", recipients={"whatsapp": 5511}),
    doc_case("recipients", recipients={"whatsapp": "+55" * 100}),
    doc_case("recipients", recipients={}),
    Case(
        None,
        encode(message_doc(payload={"type": "text", "content": "\ud83d"}), "ascii"),
        label="lone surrogate in the content",
        field="payload.content",
    ),
    Case(
        None,
        encode(message_doc(note="\udfff"), "utf8"),
        label="a surrogate encoded as UTF-8 (not valid UTF-8)",
        field="note",
    ),
    Case(
        None,
        orjson.dumps(
            message_doc(
                payload={"type": "text", "content": "\U0001f4a9" * (HUGE // 4)}, recipients={}
            )
        ),
        label="1 MiB content, no recipient",
        field="recipients",
    ),
    *[
        Case(None, orjson.dumps(message_doc(channels=[text])), label=f"channel {text!r:.20}")
        for text in EDGE_STRINGS
    ],
    *[
        Case(None, encode(message_doc(channels=[text]), "ascii"), label="surrogate channel")
        for text in LONE_SURROGATES
    ],
]


# Well-formed messages with hostile text: delivered exactly as written when both channels take
# them (WhatsApp 4,096 characters, Instagram 1,000 bytes); over a limit, dead-lettered
# (content_limit) and sent nowhere.
def _fits(text: str) -> bool:
    return len(text) <= TEXT_LIMIT_CHARACTERS and len(text.encode()) <= TEXT_LIMIT_BYTES


_TEXTS = [t for t in EDGE_STRINGS if t] + ["\U0001f4a9" * 100_000]
HOSTILE_TEXTS = [t for t in _TEXTS if _fits(t)]
OVER_LIMIT = [
    Case(
        b"conversation:7",
        orjson.dumps(message_doc(conversation_id=7, payload={"type": "text", "content": text})),
        label=f"text of {len(text)} characters",
    )
    for text in _TEXTS
    if not _fits(text)
]


async def router_body(
    deployment: Deployment, cases: Sequence[Case], texts: Sequence[str] = ()
) -> list[DeadLetter]:
    async with FakeChannelApi() as fake:
        settings = hostile_settings(
            deployment, whatsapp={"base_url": fake.base_url}, instagram={"base_url": fake.base_url}
        )
        valid = [
            Case(
                b"conversation:7",
                orjson.dumps(
                    message_doc(conversation_id=7, payload={"type": "text", "content": text})
                ),
                False,
            )
            for text in texts
        ]
        sent, letters, logs = await feed_role(
            deployment,
            settings,
            "router",
            deployment.topics["message_processing"],
            [*cases, *valid],
        )
        found = [
            assert_dead_lettered(letters, record, "router", case.field, case.also)
            for case, record in zip(cases, sent, strict=False)
        ]
        delivered = [c.text for c in fake.calls]
        assert sorted(delivered) == sorted([*texts, *texts]), "invalid records reached a channel"
    logs.check(secrets_of(settings))
    return found


def test_router_dead_letters_each_nasty_record_without_sending(deployment: Deployment) -> None:
    letters = run(router_body(deployment, ROUTER_CASES))

    assert {letter.headers["dlq.error_type"] for letter in letters} <= BAD_INPUT_TYPES
    assert {letter.headers["dlq.attempts"] for letter in letters} == {"0"}
    assert not [r for r in (d.headers["dlq.reason"] for d in letters) if "whatsapp: whatsapp" in r]


def test_router_delivers_hostile_text_unchanged(deployment: Deployment) -> None:
    assert len(OVER_LIMIT) == 2  # the 5,000 x's and the 100,000 emoji
    run(router_body(deployment, OVER_LIMIT, HOSTILE_TEXTS))


def test_router_dead_letters_a_channel_without_recipient_and_sends_the_other(
    deployment: Deployment,
) -> None:
    doc = message_doc(recipients={"whatsapp": "+5511999990000"})
    case = Case(b"conversation:42", orjson.dumps(doc), field="recipients.instagram")

    async def body() -> tuple[DeadLetter, list[str], list[dict[str, Any]]]:
        async with FakeChannelApi() as fake:
            settings = hostile_settings(
                deployment,
                whatsapp={"base_url": fake.base_url},
                instagram={"base_url": fake.base_url},
            )
            (sent,), letters, _ = await feed_role(
                deployment, settings, "router", deployment.topics["message_processing"], [case]
            )
            statuses = [
                orjson.loads(r.value)
                for r in await read_topic(
                    deployment.stack, deployment.topics["message_status_updates"]
                )
            ]
            return assert_dead_lettered(letters, sent, "router"), fake.texts(), statuses

    letter, texts, statuses = run(body())

    assert texts == ["hello"]  # whatsapp only
    assert letter.headers["dlq.error_type"] == "invalid_record"
    assert letter.headers["dlq.attempts"] == "0"
    assert letter.headers["dlq.reason"] == "instagram: no recipient (recipients.instagram)"
    failed = [
        s for s in statuses if s["message_id"] == doc["message_id"] and s["channel"] == "instagram"
    ]
    assert [s["new_status"] for s in failed] == ["FAILED"]
    assert failed[0]["details"]["reason"] == "no recipient (recipients.instagram)"


# -- the router as a process, under a stream of fuzzed records -----------------------------------


ROUTER_ROLES = "router,whatsapp_mock,instagram_mock"


class RouterUnderFire:
    """`chat4all-workers run --roles router,whatsapp_mock,instagram_mock` as a real process with
    recognisable tokens, fed batch after batch of hostile records. After each batch every record
    must be in the DLQ (read from where the last batch ended), nothing may be SENT (the mocks
    would take anything the router sent), /readyz must answer 200, and the new log lines must be
    JSON, at WARNING or below, without a secret."""

    def __init__(self, deployment: Deployment, log_path: Path) -> None:
        self.deployment = deployment
        self.log_path = log_path
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("CHAT4ALL_", "ROLES", "KAFKA_", "MINIO_", "OUTBOX_"))
            },
            **deployment.environ(
                whatsapp={"access_token": WA_TOKEN},
                instagram={"access_token": IG_TOKEN},
                router={"max_attempts": 2, "retry_base_s": 0.01, "retry_cap_s": 0.05},
            ),
        }
        self.secrets = [WA_TOKEN, IG_TOKEN, *secrets_of(deployment.settings())]
        self.positions: dict[str, dict[int, int]] = {}
        self.log_offset = 0
        self.records = 0
        self.batches = 0
        self.bytes = 0
        self.fields: Counter[str] = Counter()  # records by the field they broke
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chat4all_workers", "run", "--roles", ROUTER_ROLES],
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def ready(self) -> int:
        url = f"http://127.0.0.1:{self.deployment.metrics_port}/readyz"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None
                assert self.proc.poll() is None, self.tail()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200 or time.monotonic() > deadline:
                            return response.status
                assert time.monotonic() < deadline, f"not ready after 60 s\n{self.tail()}"
                await asyncio.sleep(0.2)

    async def feed(self, cases: Sequence[Case]) -> list[tuple[Case, DeadLetter]]:
        """Produce the batch; wait until each record is in the DLQ; check what must hold."""
        stack, topics = self.deployment.stack, self.deployment.topics
        sent = await produce_each(stack, topics["message_processing"], cases)
        wanted = {(s.topic, s.partition, s.offset): s for s in sent}
        letters: dict[tuple[str, int, int], DeadLetter] = {}
        await self.read_new(
            topics["dlq"],
            lambda record: file_dead_letter(letters, record),
            until=lambda: wanted.keys() <= letters.keys(),
        )
        statuses: list[dict[str, Any]] = []
        await self.read_new(
            topics["message_status_updates"], lambda r: statuses.append(orjson.loads(r.value))
        )
        assert [s for s in statuses if s["new_status"] != "FAILED"] == [], "a record was sent"
        found = [
            (case, assert_dead_lettered(letters, record, "router", case.field, case.also))
            for case, record in zip(cases, sent, strict=True)
        ]
        assert await self.ready() == 200, self.tail()
        assert await self.channel_requests() == 0, "the router called a channel"
        self.check_log()
        self.records += len(cases)
        self.batches += 1
        self.fields.update(case.field or "junk" for case in cases)
        self.bytes += sum(len(case.value or b"") for case in cases)
        return found

    async def channel_requests(self) -> float:
        """Every channel request the router made, whatever its outcome (`/metrics`)."""
        url = f"http://127.0.0.1:{self.deployment.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("channel_requests_total{")
        )

    async def read_new(
        self, topic: str, take: Callable[[Any], None], until: Callable[[], bool] | None = None
    ) -> None:
        """Every record of `topic` after what the previous batches read, up to its end now (or
        until `until()` holds, waiting up to 60 s for more)."""
        positions = self.positions.setdefault(topic, {})
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.deployment.stack.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = await partitions_of(self.deployment.stack, topic)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, positions.get(tp.partition, 0))
            deadline = time.monotonic() + 60
            while True:
                ends = await consumer.end_offsets(tps)
                behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
                done = until() if until is not None else not behind
                if done:
                    return
                assert time.monotonic() < deadline, f"{topic}: records missing\n{self.tail()}"
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        take(record)
                        positions[tp.partition] = record.offset + 1
        finally:
            await consumer.stop()

    def check_log(self) -> None:
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            new = log.read()
        self.log_offset += len(new)
        for line in new.decode("utf-8", errors="replace").splitlines():
            record = orjson.loads(line)  # not JSON: a traceback or a stray print
            assert record["level"] in ("DEBUG", "INFO", "WARNING"), line[:500]
            for secret in self.secrets:
                assert secret not in line, f"a secret is in the log: {line[:300]}"

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def router_under_fire(
    deployment: Deployment, tmp_path: Path, record_summary: Callable[[str], None]
) -> Iterator[RouterUnderFire]:
    worker = RouterUnderFire(deployment, tmp_path / "router.log")
    worker.start()
    try:
        assert run(worker.ready()) == 200, worker.tail()
        yield worker
    finally:
        code = worker.stop()
        record_summary(
            f"hostile router stream: {worker.records} fuzzed records ({worker.bytes} bytes) in"
            f" {worker.batches} batches, each dead-lettered naming its field, no channel"
            f" request, nothing sent; /readyz 200 after every batch; exit {code} on SIGTERM;"
            f" by field: {dict(worker.fields.most_common())}"
        )
    assert code == 0, worker.tail()


@HYPOTHESIS
@given(cases=st.lists(router_cases(), min_size=8, max_size=20))
def test_router_process_dead_letters_fuzzed_records_and_stays_ready(
    router_under_fire: RouterUnderFire, cases: list[Case]
) -> None:
    found = run(router_under_fire.feed(cases))

    assert {letter.headers["dlq.error_type"] for _, letter in found} <= BAD_INPUT_TYPES
    assert {letter.headers["dlq.attempts"] for _, letter in found} == {"0"}
