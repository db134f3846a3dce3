"""The webhooks endpoint's HTTP/1.1 server against raw clients on loopback: framing (keep-alive,
pipelining, chunked bodies, HTTP/1.0, Expect), limits, time-outs, malformed input and the stop.
The application is a small one of the test's own: the server is the unit here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httptools
import pytest

from chat4all_workers.intake.answers import Answer
from chat4all_workers.intake.http_exchange import Exchange, Head, Limits
from chat4all_workers.intake.http_server import HttpServer
from chat4all_workers.listening import Address, listen
from harness.waiting import eventually

pytestmark = pytest.mark.timeout(30)

LIMITS = Limits(max_body_bytes=1000, body_timeout_s=0.3, header_timeout_s=0.3, max_head_bytes=2048)


@dataclass
class Recorder:
    """The application: echoes each POST's body (`_Echo.respond`: now, by a future or by a
    coroutine), answers `/early` and GETs at their head, raises on `/bug`; `gates` hold a path's
    answers until set."""

    heads: list[Head] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    finished: int = 0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    settling: set[asyncio.Future[None]] = field(default_factory=set)  # the futures' setters

    def head(self, head: Head) -> Answer | Exchange:
        self.heads.append(head)
        if head.path == "/bug":
            raise RuntimeError("a bug")
        if head.path == "/early":
            return Answer(403, b"early", "text/plain", close=True)
        if head.method in ("GET", "HEAD"):
            return Answer(200, f"query {head.query}".encode(), "text/plain")
        return _Echo(self, head)


class _Echo:
    def __init__(self, recorder: Recorder, head: Head) -> None:
        self._recorder = recorder
        self._head = head

    async def _answer(self, body: bytes) -> Answer:
        gate = self._recorder.gates.get(self._head.path)
        if gate is not None:
            await gate.wait()
        if self._head.path == "/bug-later":
            raise RuntimeError("a bug")
        return Answer(200, self._head.path.encode() + b" " + body, "text/plain")

    def respond(self, body: bytes) -> Answer | Awaitable[Answer]:
        """`/now...` answered at once, `/future...` by a future (failed at `/future-bug`,
        cancelled at `/future-cancelled`), any other path by a coroutine."""
        path = self._head.path
        if path.startswith("/now"):
            return Answer(200, path.encode() + b" " + body, "text/plain")
        if path.startswith("/future"):
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._recorder.settling.add(asyncio.ensure_future(self._settle(future, body)))
            return future
        return self._answer(body)

    async def _settle(self, future: asyncio.Future[Answer], body: bytes) -> None:
        path = self._head.path
        gate = self._recorder.gates.get(path)
        if gate is not None:
            await gate.wait()
        if path == "/future-bug":
            future.set_exception(RuntimeError("a bug"))
        elif path == "/future-cancelled":
            future.cancel()
        else:
            future.set_result(Answer(200, path.encode() + b" " + body, "text/plain"))

    def refused(self, reason: str) -> Answer:
        self._recorder.refusals.append(reason)
        return Answer(413 if reason == "too_large" else 408, reason.encode(), close=True)

    def finish(self) -> None:
        self._recorder.finished += 1


@dataclass
class Served:
    app: Recorder
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., contextlib.AbstractAsyncContextManager[Served]]


@pytest.fixture
def serve() -> Serve:
    @contextlib.asynccontextmanager
    async def running(limits: Limits = LIMITS, grace_s: float = 2.0) -> AsyncIterator[Served]:
        app = Recorder()
        server = HttpServer(app, limits=limits)
        address = Address("127.0.0.1", 0, "webhooks.host, webhooks.port")
        listening = await listen("webhooks", address)
        sockets = listening.lend()
        listening.close()  # the server's copies are the only ones: its stop closes the port
        async with server.serving(sockets=sockets, grace_s=grace_s) as port:
            yield Served(app, port)

    return running


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _Responses:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.done.append(Response(status, self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []


async def answers(reader: asyncio.StreamReader, count: int) -> list[Response]:
    """The next `count` responses, skipping interim (1xx) ones."""
    parsed = _Responses()
    while len([r for r in parsed.done if r.status >= 200]) < count:
        data = await reader.read(65536)
        if not data:
            break
        parsed.parser.feed_data(data)
    return [r for r in parsed.done if r.status >= 200]


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection."""
    return await reader.read()


def post(path: str, body: bytes, *, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def chunked(path: str, chunks: list[bytes]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return head + body


# -- framing --------------------------------------------------------------------------------------


async def test_http_server_keeps_a_connection_alive_for_the_next_request(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/a", b"one"))
        first = await answers(reader, 1)
        writer.write(post("/b", b"two"))
        second = await answers(reader, 1)
        writer.close()

    assert [(r.status, r.body) for r in first + second] == [(200, b"/a one"), (200, b"/b two")]
    assert "connection" not in second[0].headers
    assert first[0].headers["content-type"] == "text/plain"


async def test_http_server_answers_pipelined_requests_in_order(serve: Serve) -> None:
    async with serve() as served:
        served.app.gates["/slow"] = gate = asyncio.Event()
        reader, writer = await served.connect()
        writer.write(post("/slow", b"1") + post("/fast", b"2") + b"GET /g?x=1 HTTP/1.1\r\n\r\n")
        await eventually(lambda: len(served.app.heads) == 3)
        gate.set()
        got = await answers(reader, 3)
        writer.close()

    assert [r.body for r in got] == [b"/slow 1", b"/fast 2", b"query x=1"]
    assert served.app.finished == 2


async def test_http_server_answers_in_order_whether_an_answer_is_now_a_future_or_a_coroutine(
    serve: Serve,
) -> None:
    async with serve() as served:
        served.app.gates["/future-held"] = future_gate = asyncio.Event()
        served.app.gates["/held"] = coroutine_gate = asyncio.Event()
        reader, writer = await served.connect()
        writer.write(
            post("/future-held", b"1")
            + post("/now", b"2")
            + post("/held", b"3")
            + post("/future", b"4")
            + post("/now", b"5")
        )
        await eventually(lambda: len(served.app.heads) == 5)
        coroutine_gate.set()
        assert served.app.finished == 0  # nothing answered before the first, held
        future_gate.set()
        got = await answers(reader, 5)
        writer.close()

    assert [r.body for r in got] == [
        b"/future-held 1",
        b"/now 2",
        b"/held 3",
        b"/future 4",
        b"/now 5",
    ]
    assert served.app.finished == 5


async def test_http_server_answers_a_failed_future_500_and_a_cancelled_one_503(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve() as served:
        got = []
        for path in ("/future-bug", "/future-cancelled", "/future"):
            reader, writer = await served.connect()
            writer.write(post(path, b"x"))
            got += await answers(reader, 1)
            writer.close()

    assert [(r.status, r.headers.get("connection")) for r in got] == [
        (500, "close"),
        (503, "close"),
        (200, None),
    ]
    assert [r.levelname for r in caplog.records if r.exc_info] == ["ERROR"]
    assert served.app.finished == 3


async def test_http_server_reads_a_chunked_body(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(chunked("/c", [b"hello ", b"chunked ", b"world"]))
        (got,) = await answers(reader, 1)
        writer.close()

    assert (got.status, got.body) == (200, b"/c hello chunked world")
    assert served.app.heads[0].content_length is None


async def test_http_server_closes_after_an_answer_to_connection_close(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/a", b"x", extra="Connection: close\r\n"))
        (got,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()

    assert (got.status, got.headers["connection"], rest) == (200, "close", b"")


async def test_http_server_closes_after_an_http_1_0_answer_unless_kept_alive(
    serve: Serve,
) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/old", b"x", version="1.0"))
        (plain,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()
        reader, writer = await served.connect()
        writer.write(post("/kept", b"1", version="1.0", extra="Connection: keep-alive\r\n"))
        (kept,) = await answers(reader, 1)
        writer.write(post("/again", b"2", version="1.0", extra="Connection: keep-alive\r\n"))
        (again,) = await answers(reader, 1)
        writer.close()

    assert (plain.body, plain.headers["connection"], rest) == (b"/old x", "close", b"")
    assert (kept.headers["connection"], again.body) == ("keep-alive", b"/again 2")


async def test_http_server_sends_100_continue_when_the_body_is_wanted(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        head = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        writer.write(head)
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"body")
        (got,) = await answers(reader, 1)
        writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert got.body == b"/e body"


async def test_http_server_answers_head_without_a_body(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")  # and no body: the next answer follows
        (get,) = await answers(reader, 1)
        writer.close()

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 6\r\n" in head  # "query ", not sent
    assert get.body == b"query "


# -- limits and refusals --------------------------------------------------------------------------


async def test_http_server_answers_at_the_head_and_discards_the_unread_body(
    serve: Serve,
) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/early", b"x" * 100)[:-50])  # half the body, the rest never comes
        (got,) = await answers(reader, 1)
        async with asyncio.timeout(1):  # our side shut at once: no waiting for the linger
            rest = await closed(reader)
        writer.write(b"y" * 5000)  # still sending: discarded, not an error
        await writer.drain()
        writer.close()

    assert (got.status, got.body, got.headers["connection"], rest) == (403, b"early", "close", b"")
    assert served.app.finished == 0  # no exchange: the application answered at the head


async def test_http_server_refuses_a_chunked_body_over_the_limit_without_keeping_it(
    serve: Serve,
) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(chunked("/big", [b"x" * 600, b"y" * 600]))
        (got,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()

    assert (got.status, got.headers["connection"], rest) == (413, "close", b"")
    assert (served.app.refusals, served.app.finished) == (["too_large"], 1)


async def test_http_server_refuses_a_body_slower_than_its_timeout(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/slow-body", b"x" * 10)[:-5])
        (got,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()

    assert (got.status, got.body, rest) == (408, b"too_slow", b"")
    assert (served.app.refusals, served.app.finished) == (["too_slow"], 1)


async def test_http_server_answers_408_to_a_head_slower_than_its_timeout(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(b"POST /slowloris HTTP/1.1\r\nHost: x\r\nX-A: ")
        (got,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()

    assert (got.status, got.headers["connection"], rest) == (408, "close", b"")
    assert served.app.heads == []


async def test_http_server_closes_a_connection_that_sends_nothing(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        async with asyncio.timeout(2):
            rest = await closed(reader)
        writer.close()

    assert rest == b""


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n", 431),
        (b"POST /a HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", 431),
        (b"POST /a HTTP/1.1\r\n" + (b"X-Forty: " + b"v" * 31 + b"\r\n") * 60 + b"\r\n", 431),
        (b"GET /" + b"u" * 3000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),
        (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (
            b"POST /a HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 1\r\n\r\nx",
            400,
        ),
    ],
    ids=[
        "header-too-large",
        "too-many-headers",
        "headers-too-large-together",
        "target-and-headers-too-large",
        "url-too-long",
        "garbage",
        "length-and-chunked",
        "two-lengths",
        "bad-chunk",
        "upgrade",
    ],
)
async def test_http_server_refuses_bad_requests_and_closes(
    serve: Serve, request_bytes: bytes, status: int
) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(request_bytes)
        (got,) = await answers(reader, 1)
        rest = await closed(reader)
        writer.close()

    assert (got.status, got.headers["connection"], rest) == (status, "close", b"")
    assert served.app.finished == len(served.app.heads)  # every exchange begun is finished


async def test_http_server_bounds_a_head_that_never_ends(serve: Serve) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        # More than a read's worth (256 KiB) of one header value: past the first read, each is
        # counted against the 2 KB of heads allowed.
        writer.write(b"POST /a HTTP/1.1\r\nX-Endless: " + b"v" * 600_000)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        (got,) = await answers(reader, 1)
        writer.close()

    assert got.status == 431


async def test_http_server_answers_500_to_a_bug_and_keeps_serving(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve() as served:
        reader, writer = await served.connect()
        writer.write(post("/bug-later", b"x"))
        (later,) = await answers(reader, 1)
        reader2, writer2 = await served.connect()
        writer2.write(post("/bug", b"x"))
        (early,) = await answers(reader2, 1)
        reader3, writer3 = await served.connect()
        writer3.write(post("/fine", b"x"))
        (fine,) = await answers(reader3, 1)
        for w in (writer, writer2, writer3):
            w.close()

    assert (later.status, early.status, fine.status) == (500, 500, 200)
    assert [r.levelname for r in caplog.records if r.exc_info] == ["ERROR", "ERROR"]


async def test_http_server_finishes_every_exchange_when_the_peer_goes_away(
    serve: Serve,
) -> None:
    async with serve() as served:
        served.app.gates["/held"] = gate = asyncio.Event()
        _, writer = await served.connect()
        # One handled (held), one waiting its turn, one body half sent: then the peer leaves.
        writer.write(post("/held", b"1") + post("/queued", b"2") + post("/half", b"xxxx")[:-2])
        await eventually(lambda: len(served.app.heads) == 3)
        writer.transport.abort()
        await eventually(lambda: served.app.finished == 1)  # the half-sent one, at the EOF
        gate.set()
        await eventually(lambda: served.app.finished == 3)  # the others, handled all the same


async def test_http_server_stops_reading_a_connection_with_too_many_waiting(
    serve: Serve,
) -> None:
    async with serve() as served:
        served.app.gates["/held"] = gate = asyncio.Event()
        reader, writer = await served.connect()
        writer.write(b"".join(post("/held", b"%d" % i) for i in range(10)))
        await eventually(lambda: len(served.app.heads) == 10)
        writer.write(b"".join(post("/held", b"%d" % i) for i in range(10, 20)))
        await writer.drain()
        # A whole request on another connection: the loop has read whatever was readable.
        other_reader, other_writer = await served.connect()
        other_writer.write(b"GET /other HTTP/1.1\r\n\r\n")
        await answers(other_reader, 1)
        parsed_while_held = len(served.app.heads)
        gate.set()
        got = await answers(reader, 20)
        writer.close()
        other_writer.close()

    assert parsed_while_held == 11  # the first ten (one read) and the other connection's GET
    assert [r.body for r in got] == [b"/held %d" % i for i in range(20)]


# -- stopping -------------------------------------------------------------------------------------


async def test_http_server_stop_finishes_requests_under_way_and_closes_idle_connections(
    serve: Serve,
) -> None:
    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
        served = await stack.enter_async_context(serve())
        served.app.gates["/held"] = gate = asyncio.Event()
        idle_reader, idle_writer = await served.connect()
        busy_reader, busy_writer = await served.connect()
        busy_writer.write(post("/held", b"x"))
        await eventually(lambda: len(served.app.heads) == 1)
        stopping = tasks.create_task(stack.aclose())
        idle_rest = await closed(idle_reader)  # closed at once
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", served.port)
        gate.set()
        (answer,) = await answers(busy_reader, 1)
        busy_rest = await closed(busy_reader)
        await stopping
        idle_writer.close()
        busy_writer.close()

    assert idle_rest == b""
    assert (answer.status, answer.headers["connection"], busy_rest) == (200, "close", b"")


async def test_http_server_stop_cancels_what_is_not_done_within_the_grace(serve: Serve) -> None:
    async with contextlib.AsyncExitStack() as stack:
        served = await stack.enter_async_context(serve(grace_s=0.2))
        served.app.gates["/never"] = asyncio.Event()
        reader, writer = await served.connect()
        writer.write(post("/never", b"x"))
        await eventually(lambda: len(served.app.heads) == 1)
        async with asyncio.timeout(2):
            await stack.aclose()
        rest = await reader.read()
        writer.close()

    assert rest == b""
    assert served.app.finished == 1
