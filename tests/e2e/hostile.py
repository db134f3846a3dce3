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
import unicodedata
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chat4all_workers.config import Settings
from chat4all_workers.observability.logging import JsonFormatter
from chat4all_workers.readiness import ChildStats
from chat4all_workers.supervisor import Supervisor
from tests.stack import StackEndpoints
from tests.support import Deployment, read_topic

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


@st.composite
def broken_document(
    draw: st.DrawFn,
    base: dict[str, Any],
    wrong: dict[str, st.SearchStrategy[Any]],
    required: Sequence[str],
    extra_fields: Sequence[str] = (),
) -> bytes:
    """`base` made invalid by one mutation (a required field dropped or a field mistyped),
    with hostile values in other fields, encoded one way or another."""
    doc = dict(base)
    for name in draw(st.lists(st.sampled_from(list(extra_fields) or ["note"]), max_size=2)):
        doc[name] = draw(huge_or_edge())
    mutation = draw(st.sampled_from(["drop", "mistype"]))
    if mutation == "drop":
        del doc[draw(st.sampled_from(list(required)))]
    else:
        name = draw(st.sampled_from(sorted(wrong)))
        doc[name] = draw(wrong[name])
    how = draw(encodings())
    text = encode(doc, how)
    if len(text) > HUGE:  # two huge fields: keep under Kafka's record limit
        doc = {k: v[:1000] if isinstance(v, str) else v for k, v in doc.items()}
        text = encode(doc, how)
    return text


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
    """One hostile record: rejected for sure (`must_reject`), or maybe applied after all."""

    key: bytes | None
    value: bytes | None
    must_reject: bool = True
    label: str = ""
    headers: Headers = ()


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
    value: bytes
    headers: dict[str, str]


async def dead_letters(
    stack: StackEndpoints, dlq_topic: str
) -> dict[tuple[str, int, int], DeadLetter]:
    """Every DLQ record by the (topic, partition, offset) it came from."""
    found: dict[tuple[str, int, int], DeadLetter] = {}
    for record in await read_topic(stack, dlq_topic):
        headers = {k: v.decode("utf-8", errors="replace") for k, v in record.headers}
        origin = (
            headers.get("dlq.original_topic", ""),
            int(headers.get("dlq.original_partition") or -1),
            int(headers.get("dlq.original_offset") or -1),
        )
        assert origin not in found, f"dead-lettered twice: {origin}"
        found[origin] = DeadLetter(record.key, record.value or b"", headers)
    return found


def assert_dead_lettered(
    letters: dict[tuple[str, int, int], DeadLetter], sent: Sent, source: str
) -> DeadLetter:
    """`sent` is in the DLQ, unchanged, with a reason, naming `source` and its origin."""
    letter = letters.get((sent.topic, sent.partition, sent.offset))
    assert letter is not None, f"not dead-lettered: {sent.value!r:.200}"
    if "dlq.value_dropped" in letter.headers:
        # Only a record at Kafka's size limit, which has no room left for the dlq.* headers.
        assert len(sent.value or b"") + len(sent.key or b"") > MIB - 8192, letter.headers
        assert letter.value == b""
    else:
        assert letter.value == (sent.value or b""), "the DLQ value must be the original bytes"
        assert letter.key == sent.key
    assert letter.headers.get("dlq.reason"), "empty dlq.reason"
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
    async with Supervisor(settings, roles=[role], drain=True, serve_http=False) as sup:
        await asyncio.wait_for(sup.wait(), timeout_s)
        (stats,) = sup.stats()
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
