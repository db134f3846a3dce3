"""Hostile input to every consumer (issue 8, item 3): arbitrary bytes, wrong types, huge fields,
unicode edge cases and hostile filenames.

Whatever arrives, each record ends in the DLQ with its reason (`dlq.source` naming the role and
`dlq.original_partition`/`dlq.original_offset` pointing back at it) or, for the backfill worker,
in the dead list `{prefix}fallback:message_queue:dead`; or, when it is valid after all, it is
applied. The role keeps running (no crash, no restart), logs nothing above WARNING for bad input,
and never logs a secret.

Each property test is a sync function: every example runs on a fresh event loop, and the
examples of one test share one isolated deployment, so records are identified by the
(partition, offset) the producer returned. One deterministic test per consumer lists concrete
nasty cases for a reader.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from chat4all_workers.channels.instagram import TEXT_LIMIT_BYTES
from chat4all_workers.channels.whatsapp import TEXT_LIMIT_CHARACTERS
from tests.e2e.hostile import (
    EDGE_STRINGS,
    EXAMPLES,
    FILENAMES,
    HUGE,
    HYPOTHESIS,
    LONE_SURROGATES,
    MIB,
    NASTY_HEADERS,
    STATUSES,
    Case,
    Sent,
    assert_dead_lettered,
    assert_safe_key,
    broken_document,
    edge_text,
    encode,
    feed_role,
    hostile_settings,
    json_values,
    junk_bytes,
    non_uuid,
    not_a,
    not_text_matching,
    record_headers,
    run_drained,
    secrets_of,
    watch_logs,
)
from tests.roles.uploads import seed_upload
from tests.support import Deployment, FakeChannelApi

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


def status_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": 42,
        "channel": "whatsapp",
        "new_status": "SENT",
        "timestamp": "2026-11-28T10:30:00Z",
        "details": {"provider_message_id": "wamid.1"},
    }
    doc.update(changes)
    return doc


STATUS_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "message_id": non_uuid(),
    "conversation_id": not_a(int),
    "channel": st.one_of(not_a(str), st.just("")),
    "new_status": not_text_matching(STATUSES),
    "details": not_a(dict).filter(lambda v: v is not None),
    "timestamp": st.one_of(
        not_a(str).filter(lambda v: v is not None), st.text(max_size=20).map(lambda s: "x" + s)
    ),
}


@st.composite
def status_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["junk", "broken", "hostile_valid"]))
    key = draw(KEYS)
    if kind == "junk":
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    if kind == "broken":
        value = draw(
            broken_document(
                status_doc(message_id=str(draw(st.uuids()))),
                STATUS_WRONG,
                ["message_id", "conversation_id", "channel", "new_status"],
                ["details", "note"],
            )
        )
        return Case(key, value, headers=draw(record_headers()))
    # Well-typed, but with hostile strings: applied, or rejected with a reason.
    doc = status_doc(
        message_id=str(draw(st.uuids())),
        channel=draw(edge_text().filter(bool)),
        new_status=draw(st.sampled_from(STATUSES)),
        conversation_id=draw(st.integers(min_value=-(2**63), max_value=2**64 - 1)),
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
    Case(None, orjson.dumps(status_doc(message_id=42)), label="message_id an int"),
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
]


async def status_updater_body(deployment: Deployment, cases: Sequence[Case]) -> None:
    settings = hostile_settings(deployment)
    topic = deployment.topics["message_status_updates"]
    sent, letters, logs = await feed_role(deployment, settings, "status_updater", topic, cases)
    conn = await asyncpg.connect(deployment.database_url)
    try:
        for case, record in zip(cases, sent, strict=True):
            if case.must_reject or (record.topic, record.partition, record.offset) in letters:
                assert_dead_lettered(letters, record, "status_updater")
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


def merge_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upload_id": str(uuid.uuid4()),  # no such upload
        "filename": "a.pdf",
        "total_chunks": 1,
        "timestamp": "2026-11-28T10:30:00Z",
    }
    doc.update(changes)
    return doc


MERGE_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "upload_id": non_uuid(),
    "total_chunks": st.one_of(not_a(int), st.integers(max_value=0)),
}


@st.composite
def merge_requests(draw: st.DrawFn) -> Case:
    key = draw(KEYS)
    if draw(st.booleans()):
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    base = merge_doc(upload_id=str(draw(st.uuids())))
    value = draw(
        broken_document(base, MERGE_WRONG, ["upload_id", "total_chunks"], ["filename", "x"])
    )
    return Case(key, value, headers=draw(record_headers()))


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
    for record in sent[: len(cases)]:
        assert_dead_lettered(letters, record, "merge")
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
    return {"conversation_id": not_a(int, str, bool)}


@st.composite
def backfill_items(draw: st.DrawFn, topic: str) -> bytes:
    kind = draw(st.sampled_from(["junk", "envelope", "bare"]))
    if kind == "junk":
        return draw(junk_bytes())
    if kind == "bare":
        base = {"message_id": str(draw(st.uuids())), "conversation_id": 42}
        return draw(broken_document(base, bare_wrong(), ["message_id", "conversation_id"]))
    wrong: dict[str, st.SearchStrategy[Any]] = {
        "topic": st.one_of(not_a(str), st.sampled_from(BAD_TOPIC_NAMES)),
        "key": not_a(str).filter(lambda v: v is not None),
        "headers": st.one_of(
            not_a(dict).filter(lambda v: v is not None),
            st.dictionaries(st.text(max_size=5), not_a(str), min_size=1, max_size=3),
        ),
    }
    return draw(broken_document(envelope(topic), wrong, ["topic", "value"], ["note"]))


def backfill_cases(topic: str) -> list[bytes]:
    return [
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


async def backfill_body(deployment: Deployment, items: Sequence[bytes]) -> None:
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
    logs.check(secrets_of(settings))


def test_backfill_buries_each_nasty_item_with_a_reason(deployment: Deployment) -> None:
    run(backfill_body(deployment, backfill_cases(deployment.topics["message_processing"])))


@HYPOTHESIS
@given(data=st.data())
def test_backfill_survives_arbitrary_items(deployment: Deployment, data: st.DataObject) -> None:
    topic = deployment.topics["message_processing"]
    items = data.draw(st.lists(backfill_items(topic), min_size=1, max_size=20))
    run(backfill_body(deployment, items))


# -- router ---------------------------------------------------------------------------------------


def message_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "conversation_id": 42,
        "sender_id": 7,
        "sender_username": "ana",
        "payload": {"type": "text", "content": "hello"},
        "channels": ["whatsapp", "instagram"],
        "recipients": {"whatsapp": "+5511999990000", "instagram": "17841400000000000"},
        "created_at": "2026-11-28T10:30:00Z",
    }
    doc.update(changes)
    return doc


def unknown_channels() -> st.SearchStrategy[list[Any]]:
    bad = edge_text().filter(lambda c: c not in ("whatsapp", "instagram", "all"))
    return st.lists(st.one_of(bad, not_a(str)), min_size=1, max_size=3).map(
        lambda extra: ["whatsapp", *extra]
    )


ROUTER_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "message_id": non_uuid(),
    "conversation_id": not_a(int),
    "sender_id": not_a(int).filter(lambda v: v is not None),
    "payload": st.one_of(
        not_a(dict),
        st.fixed_dictionaries({"type": not_text_matching(["text", "file"])}),
        st.fixed_dictionaries(
            {"type": st.just("text"), "content": st.one_of(not_a(str), st.just(""))}
        ),
        st.fixed_dictionaries({"type": st.just("file"), "file_id": non_uuid()}),
        # a well-formed file message whose file does not exist
        st.fixed_dictionaries({"type": st.just("file"), "file_id": st.uuids().map(str)}),
    ),
    "channels": st.one_of(
        not_a(list).filter(lambda v: v != "all"), st.just([]), unknown_channels()
    ),
    "recipients": st.one_of(
        not_a(dict).filter(lambda v: v is not None),
        st.dictionaries(st.sampled_from(["whatsapp", "instagram"]), not_a(str), min_size=1),
        st.just({}),
        st.just({"whatsapp": "", "instagram": ""}),
    ),
}


@st.composite
def router_cases(draw: st.DrawFn) -> Case:
    key = draw(KEYS)
    if draw(st.integers(0, 3)) == 0:
        return Case(key, draw(junk_bytes()), headers=draw(record_headers()))
    base = message_doc(message_id=str(draw(st.uuids())))
    value = draw(
        broken_document(
            base,
            ROUTER_WRONG,
            ["message_id", "conversation_id", "payload", "channels"],
            ["sender_username", "created_at", "note"],
        )
    )
    return Case(key, value, headers=draw(record_headers()))


ROUTER_CASES: list[Case] = [
    *[Case(b"k", b"junk", headers=h, label="nasty headers") for h in NASTY_HEADERS],
    Case(b"k", None, label="tombstone"),
    Case(b"conversation:1", b"\xde\xad\xbe\xef", label="binary"),
    Case(None, b"{}", label="empty object"),
    Case(None, b"[]", label="a list"),
    Case(None, orjson.dumps(message_doc(message_id=1)), label="message_id an int"),
    Case(None, orjson.dumps(message_doc(message_id="\U0001f4a5")), label="message_id emoji"),
    Case(None, orjson.dumps(message_doc(conversation_id="42")), label="conversation_id text"),
    Case(None, orjson.dumps(message_doc(conversation_id=None)), label="conversation_id null"),
    Case(None, orjson.dumps(message_doc(sender_id=False)), label="sender_id a bool"),
    Case(None, orjson.dumps(message_doc(payload="hello")), label="payload a string"),
    Case(None, orjson.dumps(message_doc(payload={"type": "video"})), label="unknown type"),
    Case(None, orjson.dumps(message_doc(payload={"type": "text"})), label="no content"),
    Case(
        None,
        orjson.dumps(message_doc(payload={"type": "text", "content": 5})),
        label="content a number",
    ),
    Case(
        None,
        orjson.dumps(message_doc(payload={"type": "file", "file_id": "../../x"})),
        label="file_id a path",
    ),
    Case(
        None,
        orjson.dumps(message_doc(payload={"type": "file", "file_id": str(uuid.uuid4())})),
        label="file that does not exist",
    ),
    Case(None, orjson.dumps(message_doc(channels=[])), label="no channels"),
    Case(None, orjson.dumps(message_doc(channels="whatsapp")), label="channels a string"),
    Case(None, orjson.dumps(message_doc(channels=["sms"])), label="unknown channel"),
    Case(None, orjson.dumps(message_doc(channels=["whatsapp", None])), label="channel null"),
    Case(
        None,
        orjson.dumps(message_doc(channels=["whatsapp", "\u202ewhatsapp"])),
        label="RTL-spoofed channel",
    ),
    Case(None, orjson.dumps(message_doc(channels=["WhatsApp"])), label="channel case"),
    Case(None, orjson.dumps(message_doc(recipients=["+55"])), label="recipients a list"),
    Case(None, orjson.dumps(message_doc(recipients={"whatsapp": 5511})), label="recipient int"),
    Case(None, orjson.dumps(message_doc(recipients={})), label="no recipients"),
    Case(
        None,
        encode(message_doc(payload={"type": "text", "content": "\ud83d"}), "ascii"),
        label="lone surrogate in the content",
    ),
    Case(
        None,
        orjson.dumps(
            message_doc(
                payload={"type": "text", "content": "\U0001f4a9" * (HUGE // 4)}, recipients={}
            )
        ),
        label="1 MiB content, no recipient",
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
) -> None:
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
        for record in sent[: len(cases)]:
            assert_dead_lettered(letters, record, "router")
        delivered = [c.text for c in fake.calls]
        assert sorted(delivered) == sorted([*texts, *texts]), "invalid records reached a channel"
    logs.check(secrets_of(settings))


def test_router_dead_letters_each_nasty_record_without_sending(deployment: Deployment) -> None:
    run(router_body(deployment, ROUTER_CASES))


def test_router_delivers_hostile_text_unchanged(deployment: Deployment) -> None:
    assert len(OVER_LIMIT) == 2  # the 5,000 x's and the 100,000 emoji
    run(router_body(deployment, OVER_LIMIT, HOSTILE_TEXTS))


@HYPOTHESIS
@given(cases=st.lists(router_cases(), min_size=1, max_size=20))
def test_router_dead_letters_arbitrary_records_without_sending(
    deployment: Deployment, cases: list[Case]
) -> None:
    run(router_body(deployment, cases))
