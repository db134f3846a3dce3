"""Hostile input for every consumer: strategies, fixed nasty cases, and the checks every test
shares (where each record ended up, what was logged, whether the role kept running).

The strategies build records that are invalid BY CONSTRUCTION (a required field dropped or
mistyped, a value outside the wire format), so a test knows that each one must be rejected,
while the unicode edge cases, huge fields and hostile filenames ride along in the other fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chat4all_workers.app import App
from chat4all_workers.config import Settings
from chat4all_workers.observability.logging import JsonFormatter
from chat4all_workers.readiness import ChildStats
from harness.deployment import Deployment
from harness.stack import StackEndpoints
from harness.topics import read_topic

# Recognisable credentials: none of them may ever appear in a formatted log line.
WA_TOKEN = "SECRET-WA-TOKEN-xyz"
IG_TOKEN = "SECRET-IG-TOKEN-xyz"

# Few examples, each a whole list of records: every example starts the role against real Kafka.
# HOSTILE_EXAMPLES=200 hunts longer (`make soak` does).
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "10"))
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Parsing alone is pure and fast: unit tests afford more examples than end-to-end ones (100 by
# default, Hypothesis's own default; 2,000 under `make soak`).
UNIT_EXAMPLES = 10 * EXAMPLES

MIB = 1024 * 1024
# Big, but leaves room in Kafka's 1 MiB record limit for the JSON around it.
HUGE = MIB - 4096
STATUSES = ("ACCEPTED", "PROCESSING", "SENT", "DELIVERED", "READ", "FAILED")
UUID = str(uuid.UUID(int=0x1234))

# -- unicode edge cases -------------------------------------------------------------------------

EDGE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil\u202c",  # right-to-left override
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # RTL mark + Hebrew
    "\U0001f4a5\U0001f469\u200d\U0001f467",  # emoji and a ZWJ sequence
    "e\u0301" * 50,  # combining accents
    "\ufeffBOM",
    "\u2028line\u2029para",
    "\x1b[31mred\x1b[0m",  # terminal escape
    "\x85\x9f",  # C1 controls
    "\ufffd\uffff",
    "\U0010ffff",
    "%00%2e%2e%2f",
    "' OR 1=1; --",
    "{{7*7}}${jndi:ldap://x}",
    "x" * 5000,  # overlong
)
LONE_SURROGATES = ("\ud800", "\udfff", "a\udc00b")

FILENAMES: tuple[str, ...] = (
    "../../etc/passwd",
    "..",
    ".",
    "...",
    "/absolute/path.pdf",
    "a/b/c.pdf",
    "back\\slash\\..\\x.pdf",
    "./hidden",
    ".. /x",
    "name\nwith\rnewlines\t.pdf",
    "bell\x07\x1b[2J.pdf",
    "c1\x85\x9b.pdf",
    "del\x7f.pdf",
    " \t ",
    "",
    "x" * 1000,
    "\U0001f600" * 1000,  # 1000 four-byte characters
    "\u00e9" * 300,
    "\u202egnp.exe",
    "\u05e7\u05d5\u05d1\u05e5.pdf",
    "\u6587\u4ef6.pdf",
    "a%2F..%2Fb.pdf",
    "query?x=1&y=2#frag.pdf",
    "plus+and space.pdf",
    "CON",
    "....//....//x",
)


def printable_text(max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(max_size=max_size)


def edge_text() -> st.SearchStrategy[str]:
    """Strings that break naive code (no lone surrogates: those cannot be UTF-8)."""
    return st.one_of(
        st.sampled_from(EDGE_STRINGS),
        st.text(max_size=30),
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
        st.builds(
            lambda s, n: s * n,
            st.sampled_from(["\U0001f4a9", "\x00", "\u202e", "ab"]),
            st.integers(1, 3000),
        ),
    )


def json_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        edge_text(),
    )


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        json_scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
        ),
        max_leaves=12,
    )


def not_a(*kinds: type) -> st.SearchStrategy[Any]:
    """JSON values of any type but `kinds` (bool is not an int here)."""

    def wrong(value: Any) -> bool:
        if isinstance(value, bool):
            return bool not in kinds
        return not isinstance(value, kinds)

    return json_values().filter(wrong)


def not_text_matching(good: Sequence[str]) -> st.SearchStrategy[Any]:
    """Any JSON value except the strings in `good`."""
    return json_values().filter(lambda v: not (isinstance(v, str) and v in good))


def non_uuid() -> st.SearchStrategy[Any]:
    def invalid(value: Any) -> bool:
        try:
            uuid.UUID(str(value))
        except ValueError:
            return True
        return False

    return json_values().filter(invalid)


def outside_bigint() -> st.SearchStrategy[int]:
    """Integers a bigint column cannot hold (orjson reads those beyond 64 bits as floats)."""
    return st.one_of(
        st.integers(min_value=2**63, max_value=2**80), st.integers(max_value=-(2**63) - 1)
    )


def not_rfc3339() -> st.SearchStrategy[Any]:
    """Values that are not an RFC 3339 date-time with offset: other types, other formats,
    impossible dates, overlong strings."""
    shape = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
    return st.one_of(
        not_a(str).filter(lambda v: v is not None),
        st.text(max_size=40).filter(lambda t: not shape.fullmatch(t)),
        st.sampled_from(
            [
                "2026-11-28",  # a date
                "2026-11-28T10:30:00",  # no offset
                "20261128T103000Z",  # ISO 8601 basic format
                "2026-02-30T10:30:00Z",  # no such day
                "2026-11-28T24:00:00Z",
                "0000-01-01T00:00:00Z",
                "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
                "2026-11-28T10:30:00+25:00",
                "yesterday",
                "2026-11-28T10:30:00Z" * 1000,
                "A" * (HUGE - 1024),
            ]
        ),
    )


# -- encoding a document to bytes ------------------------------------------------------------------


def encode(doc: Any, how: str) -> bytes:
    """JSON text of `doc`: plain UTF-8, ASCII with \\u escapes (lone surrogates stay escaped),
    or with raw surrogates encoded anyway (invalid UTF-8)."""
    if how == "ascii":
        return json.dumps(doc, ensure_ascii=True).encode()
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def encodings() -> st.SearchStrategy[str]:
    return st.sampled_from(["ascii", "utf8"])


@st.composite
def huge_or_edge(draw: st.DrawFn) -> Any:
    """A field value that is hostile but well-typed as a string: about 1 MiB (in any of our
    encodings), a unicode edge case, or a lone surrogate."""
    return draw(
        st.one_of(
            edge_text(),
            st.just("A" * (HUGE - 1024)),
            st.just("\U0001f4a9" * (HUGE // 12)),  # 12 bytes each as \\ud83d\\udca9
            st.sampled_from(LONE_SURROGATES),
        )
    )


@dataclass(frozen=True)
class Broken:
    """A document made invalid on purpose: its bytes, and the field whose breaking made it so
    (the dead-letter reason must name it)."""

    value: bytes
    field: str
    # Other fields given hostile values: one of them may be what the record is rejected for
    # first (the mutation may have been one the format allows, like a file that does not exist).
    also: tuple[str, ...] = ()


@st.composite
def broken_document(
    draw: st.DrawFn,
    base: dict[str, Any],
    wrong: dict[str, st.SearchStrategy[Any]],
    required: Sequence[str],
    extra_fields: Sequence[str] = (),
) -> Broken:
    """`base` made invalid by one mutation (a required field dropped or a field mistyped),
    with hostile values in other fields, encoded one way or another."""
    doc = dict(base)
    hostile = draw(st.lists(st.sampled_from(list(extra_fields) or ["note"]), max_size=2))
    for name in hostile:
        doc[name] = draw(huge_or_edge())
    mutation = draw(st.sampled_from(["drop", "mistype"]))
    if mutation == "drop":
        name = draw(st.sampled_from(list(required)))
        del doc[name]
    else:
        name = draw(st.sampled_from(sorted(wrong)))
        doc[name] = draw(wrong[name])
    how = draw(encodings())
    text = encode(doc, how)
    if len(text) > HUGE:  # two huge fields: keep under Kafka's record limit (the broken one)
        doc = {k: v[:1000] if isinstance(v, str) and k != name else v for k, v in doc.items()}
        text = encode(doc, how)
    if len(text) > HUGE:  # the broken one alone is too big: 1000 characters still break it
        doc = {k: v[:1000] if isinstance(v, str) else v for k, v in doc.items()}
        text = encode(doc, how)
    return Broken(text, name, tuple(sorted(set(hostile) - {name})))


def junk_bytes() -> st.SearchStrategy[bytes]:
    """Bytes that are never a JSON object with the right fields."""
    return st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b"{}",
                b'"just a string"',
                b"\xff\xfe\x00\x00",
                b"{" * 5000,
                b"[" * 1100 + b"]" * 1100,
                b'{"a": 1e400}',
                b'{"a": NaN}',
                b'{"message_id": "\\ud800"}',
                b"\xef\xbb\xbf{}",
            ]
        ),
        json_values().map(lambda v: encode([v], "ascii")),
    )


# -- producing and finding records ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """A record we produced, by where it landed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class Case:
    """One hostile record: rejected for sure (`must_reject`), or maybe applied after all.
    `field`: the field its reason must name, when one was broken on purpose."""

    key: bytes | None
    value: bytes | None
    must_reject: bool = True
    label: str = ""
    headers: Headers = ()
    field: str | None = None
    also: tuple[str, ...] = ()  # fields the reason may name instead (see Broken.also)


def record_headers() -> st.SearchStrategy[Headers]:
    """Kafka headers as any client may write them: null values, garbage trace context."""
    names = st.one_of(
        st.sampled_from(["traceparent", "tracestate", "dlq.reason", "event_id", ""]),
        st.text(max_size=10),
    )
    values = st.one_of(
        st.none(),
        st.binary(max_size=60),
        st.sampled_from([b"00-" + b"f" * 32 + b"-" + b"f" * 16 + b"-01", b"\xff" * 300]),
    )
    return st.lists(st.tuples(names, values), max_size=3).map(tuple)


# Headers a record may carry whatever its value: a null trace context, garbage, a forged dlq.*.
NASTY_HEADERS: tuple[Headers, ...] = (
    (("traceparent", None),),
    (("traceparent", b"\xff" * 300), ("tracestate", b"\x00,=,=")),
    (("dlq.reason", None), ("dlq.original_offset", b"-1"), ("", b"")),
)


async def produce_each(stack: StackEndpoints, topic: str, cases: Sequence[Case]) -> list[Sent]:
    """Produce the cases' records (with their headers) and say where each one landed."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, c.value, key=c.key, headers=list(c.headers) or None)
            for c in cases
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Sent(topic, meta.partition, meta.offset, c.key, c.value)
        for meta, c in zip(metas, cases, strict=True)
    ]


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


async def dead_letters(
    stack: StackEndpoints, dlq_topic: str
) -> dict[tuple[str, int, int], DeadLetter]:
    """Every DLQ record by the (topic, partition, offset) it came from."""
    found: dict[tuple[str, int, int], DeadLetter] = {}
    for record in await read_topic(stack, dlq_topic):
        file_dead_letter(found, record)
    return found


def file_dead_letter(found: dict[tuple[str, int, int], DeadLetter], record: Any) -> None:
    """Add a DLQ record to `found`, under the origin its headers name; never twice."""
    headers = {k: v.decode("utf-8", errors="replace") for k, v in record.headers}
    origin = (
        headers.get("dlq.original_topic", ""),
        int(headers.get("dlq.original_partition") or -1),
        int(headers.get("dlq.original_offset") or -1),
    )
    assert origin not in found, f"dead-lettered twice: {origin}"
    found[origin] = DeadLetter(record.key, record.value, headers)


# `dlq.error_type` values (contract section 3) a record that is bad by itself may get.
BAD_INPUT_TYPES = frozenset({"invalid_record", "file_unavailable", "unknown_upload"})
MAX_REASON_CHARS = 1000


def assert_dead_lettered(
    letters: dict[tuple[str, int, int], DeadLetter],
    sent: Sent,
    source: str,
    field: str | None = None,
    also: Sequence[str] = (),
) -> DeadLetter:
    """`sent` is in the DLQ, unchanged (a tombstone stays one), with a short one-line reason
    (naming `field`, or one of `also`, when given), from `source`, pointing back at its origin."""
    letter = letters.get((sent.topic, sent.partition, sent.offset))
    assert letter is not None, f"not dead-lettered: {sent.value!r:.200}"
    if "dlq.value_dropped" in letter.headers:
        # Only a record at Kafka's size limit, which has no room left for the dlq.* headers.
        assert len(sent.value or b"") + len(sent.key or b"") > MIB - 8192, letter.headers
        assert letter.value == b""
    else:
        assert letter.value == sent.value, "the DLQ value must be the original bytes"
        assert letter.key == sent.key
    reason = letter.headers.get("dlq.reason", "")
    assert reason, "empty dlq.reason"
    assert len(reason) <= MAX_REASON_CHARS, f"a reason of {len(reason)} chars: {reason[:200]}"
    assert "\n" not in reason, reason
    if field is not None:
        named = [f for f in (field, *also) if f in reason]
        assert named, f"the reason does not name {field!r} (or one of {also}): {reason}"
    assert letter.headers.get("dlq.source") == source
    assert letter.headers.get("dlq.original_partition") == str(sent.partition)
    assert letter.headers.get("dlq.original_offset") == str(sent.offset)
    return letter


# -- running a role ------------------------------------------------------------------------------


def hostile_settings(deployment: Deployment, **overrides: dict[str, Any]) -> Settings:
    """The deployment with recognisable channel tokens and quick retries and restarts."""
    sections: dict[str, dict[str, Any]] = {
        "whatsapp": {"access_token": WA_TOKEN, "timeout_s": 5.0},
        "instagram": {"access_token": IG_TOKEN, "timeout_s": 5.0},
        "router": {"max_attempts": 2, "retry_base_s": 0.01, "retry_cap_s": 0.05},
        "fallback": {"poll_interval_s": 0.1},
        "supervisor": {"backoff_base_s": 0.1, "backoff_cap_s": 0.5, "shutdown_timeout_s": 10.0},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return deployment.settings(**sections)


async def run_drained(settings: Settings, role: str, timeout_s: float = 60.0) -> ChildStats:
    """Run `role` until its input is used up; it must not have crashed or restarted."""
    async with App(settings, roles=[role], drain=True, serve_http=False) as app:
        await asyncio.wait_for(app.wait(), timeout_s)
        (stats,) = app.stats()
    assert stats.restarts_total == 0, f"{role} restarted: {stats.last_error}"
    assert stats.last_error is None, f"{role} crashed: {stats.last_error}"
    assert stats.state in ("running", "stopped"), stats
    return stats


# -- logs ----------------------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Every log record while active, formatted as the JSON line production would write."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, self.format(record)))

    def check(self, secrets: Sequence[str]) -> None:
        assert self.lines, "no log record captured: the watch is not attached"
        loud = [line for level, line in self.lines if level > logging.WARNING]
        assert not loud, "logged above WARNING for bad input:\n" + "\n".join(loud[:5])
        for secret in secrets:
            leaks = [line for _, line in self.lines if secret in line]
            assert not leaks, f"a secret is in the log:\n{leaks[0][:500]}"


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """Capture every record of our code (DEBUG up) and of the libraries (INFO up)."""
    watch = LogWatch()
    root = logging.getLogger()
    ours = logging.getLogger("chat4all_workers")
    saved = (root.level, ours.level)
    root.addHandler(watch)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


async def feed_role(
    deployment: Deployment, settings: Settings, role: str, topic: str, cases: Sequence[Case]
) -> tuple[list[Sent], dict[tuple[str, int, int], DeadLetter], LogWatch]:
    """Produce the cases, run `role` until its input is drained, and read the DLQ back; the
    log watch covers the run, for `check` afterwards."""
    with watch_logs() as logs:
        sent = await produce_each(deployment.stack, topic, cases)
        await run_drained(settings, role)
    return sent, await dead_letters(deployment.stack, deployment.topics["dlq"]), logs


def secrets_of(settings: Settings) -> list[str]:
    return [
        WA_TOKEN,
        IG_TOKEN,
        settings.s3.secret_key.get(),
        # the user:password part of the DSN
        settings.postgres.url.get().split("//", 1)[1].split("@", 1)[0],
    ]


# -- object keys ---------------------------------------------------------------------------------


def assert_safe_key(key: str, upload_id: uuid.UUID) -> None:
    """SPEC section 6: `files/{upload_id}/{sanitised}`, no separator, `..` or control
    character in the name, and short enough for any S3 (a key segment of at most 255 bytes)."""
    prefix, _, name = key.rpartition("/")
    assert prefix == f"files/{upload_id}", key
    assert name not in ("", ".", ".."), key
    assert ".." not in name, key
    assert "\\" not in name, key
    assert not [c for c in name if unicodedata.category(c) == "Cc"], f"control char in {name!r}"
    assert len(name.encode()) <= 255, f"name of {len(name.encode())} bytes"
    assert len(key.encode()) <= 1024, key


# -- the consumed formats: a valid document, and how each field can be wrong ---------------------
# A field's "wrong" strategy breaks the FORMAT (the record is invalid whatever the world holds);
# tests add their own cases that are valid in form but fail later (a file that does not exist).


def message_doc(**changes: Any) -> dict[str, Any]:
    """A valid `message_processing` value (contract section 3)."""
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


def bigint_wrong() -> st.SearchStrategy[Any]:
    return st.one_of(not_a(int).filter(lambda v: v is not None), outside_bigint())


MESSAGE_REQUIRED = ("message_id", "conversation_id", "payload", "channels")
MESSAGE_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "message_id": st.one_of(
        non_uuid(),
        st.uuids().map(lambda u: f"{{{u}}}"),  # forms uuid.UUID takes but the format does not
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
    ),
    "conversation_id": bigint_wrong(),
    "sender_id": bigint_wrong(),
    "sender_username": st.one_of(
        not_a(str).filter(lambda v: v is not None),
        st.text(min_size=256, max_size=300),
        st.just("\U0001f4a9" * (HUGE // 12)),
    ),
    "payload": st.one_of(
        not_a(dict).filter(lambda v: v is not None),
        st.fixed_dictionaries({"type": not_text_matching(["text", "file"])}),
        st.fixed_dictionaries(
            {"type": st.just("text"), "content": st.one_of(not_a(str), st.just(""))}
        ),
        st.fixed_dictionaries({"type": st.just("file"), "file_id": non_uuid()}),
        st.fixed_dictionaries(
            {
                "type": st.just("file"),
                "file_id": st.uuids().map(str),
                "content": not_a(str).filter(lambda v: v is not None),
            }
        ),
    ),
    "channels": st.one_of(
        not_a(list).filter(lambda v: v not in ("all", None)), st.just([]), unknown_channels()
    ),
    "recipients": st.one_of(
        not_a(dict).filter(lambda v: v is not None),
        st.dictionaries(
            st.sampled_from(["whatsapp", "instagram", "x"]),
            not_a(str).filter(lambda v: v is not None),
            min_size=1,
        ),
        st.fixed_dictionaries({"whatsapp": st.text(min_size=257, max_size=300)}),
    ),
    "created_at": not_rfc3339(),
}
MESSAGE_HOSTILE_FIELDS = ("sender_username", "created_at", "note")


def status_doc(**changes: Any) -> dict[str, Any]:
    """A valid `message_status_updates` value."""
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


STATUS_REQUIRED = ("message_id", "conversation_id", "channel", "new_status")
STATUS_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "message_id": MESSAGE_WRONG["message_id"],
    "conversation_id": st.one_of(not_a(int), outside_bigint()),
    "channel": not_text_matching(["whatsapp", "instagram"]),
    "new_status": not_text_matching(STATUSES),
    "details": st.one_of(
        not_a(dict).filter(lambda v: v is not None),
        st.fixed_dictionaries({"reason": st.just("a\x00b")}),  # jsonb cannot store a NUL
        st.fixed_dictionaries({"nested": st.just([{"\x00": 1}])}),
    ),
    "timestamp": not_rfc3339(),
}


def merge_doc(**changes: Any) -> dict[str, Any]:
    """A valid `file_merge_requests` value (for an upload that does not exist)."""
    doc: dict[str, Any] = {
        "upload_id": str(uuid.uuid4()),
        "filename": "a.pdf",
        "total_chunks": 1,
        "timestamp": "2026-11-28T10:30:00Z",
    }
    doc.update(changes)
    return doc


MERGE_REQUIRED = ("upload_id", "total_chunks")
MERGE_WRONG: dict[str, st.SearchStrategy[Any]] = {
    "upload_id": MESSAGE_WRONG["message_id"],
    "total_chunks": st.one_of(
        not_a(int), st.integers(max_value=0), st.integers(min_value=2**31, max_value=2**70)
    ),
    "filename": st.one_of(not_a(str).filter(lambda v: v is not None), st.just("x" * 5000)),
    "timestamp": not_rfc3339(),
}
