"""The channel mocks' webhooks: signed POSTs to the configured URL, as Meta calls an app back.

A mock schedules a chain of callbacks per accepted message (WhatsApp: `sent` at once, then
`delivered` and `read`, or `failed`; Instagram: the echo, then the read receipt) and one per
user's message, each at its delay after the scheduling (plus `delay_s`, for every one) and never
before the previous one of its chain was answered 200. Each body is written with
meta/notifications.py's writers, timestamped when it falls due (a user's message carries its
own time), and signed with the app secret (`X-Hub-Signature-256`), so the webhooks role checks
it exactly as it checks Meta's. Like Meta, anything but a 200 (or no answer) is sent again after
a backoff (here `_RETRY_BASE_S` doubling to `_RETRY_CAP_S` with jitter: short, because a
developer wants the statuses soon after the webhooks role is back), for as long as the mock
runs.

Bounded: at most `max_pending` chains wait (more are dropped and counted) and `max_in_flight`
POSTs are under way at once. On shutdown (`flush`), what is pending is sent at once, delays
ignored, until everything was answered or the deadline given; a refused connection then ends the
flush early (nobody listens: nothing will get better within the deadline), and what was left is
counted as dropped and named in one WARNING. Without an app secret nothing can be signed (and
without an http(s) URL nothing can be sent): no callback is scheduled, and `stats()` says why.

The POSTs go through the process's one HTTP client (channels/http.py): a JSON body with a length,
to a plain http(s) URL, is all it takes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from chat4all_workers.backoff import backoff_delay_s
from chat4all_workers.channels.http import HttpClient, HTTPTransportError, RequestTimeoutError
from chat4all_workers.frozen import frozen
from chat4all_workers.meta.signature import SIGNATURE_HEADER, sign
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)

_RETRY_BASE_S = 0.2
_RETRY_CAP_S = 5.0
_TIMEOUT_S = 5.0
_WARN_EVERY_S = 10.0

# A callback's body, written when it falls due (its argument: now, Unix seconds: the event's
# time in the notification).
BodyWriter = Callable[[float], bytes]


@frozen
class Stage:
    """One callback of a chain: `after_s` from the acceptance."""

    after_s: float
    write: BodyWriter


@dataclass(order=True)
class _Pending:
    due: float  # loop time
    seq: int
    accepted_at: float = field(compare=False)  # loop time
    stages: Sequence[Stage] = field(compare=False)
    stage: int = field(default=0, compare=False)
    attempts: int = field(default=0, compare=False)
    body: bytes | None = field(default=None, compare=False)


@dataclass(eq=False)
class Callbacks:
    http: HttpClient
    _: KW_ONLY
    name: str
    url: str
    secret: str = field(repr=False)
    max_pending: int = 50_000
    max_in_flight: int = 64
    delay_s: float = 0.0  # every callback waits this much more (`mocks.webhook_delay_ms`)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._in_flight = 0
        self._flushing = False
        self._unreachable = False  # a refused connection while flushing
        self._warned_at: dict[str, float] = {}
        self._unwarned: dict[str, int] = {}
        self.counts = dict.fromkeys(("posted", "retried", "dropped"), 0)
        self._enabled = self.enabled

    @property
    def not_sent(self) -> str | None:
        """Why no webhook is sent, or None when they are."""
        if not self.secret:
            return "no app secret: webhooks cannot be signed, none is sent"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"not an http(s) URL: {self.url!r:.80}"
        return None

    @property
    def enabled(self) -> bool:
        return self.not_sent is None

    def stats(self) -> dict[str, Any]:
        not_sent = self.not_sent
        return {
            "url": self.url,
            "signed": bool(self.secret),
            **({"not_sent": not_sent} if not_sent else {}),
            **self.counts,
            "pending": len(self._heap) + self._in_flight,
        }

    def schedule(self, stages: Sequence[Stage]) -> None:
        """The chain of callbacks for a message accepted now."""
        if not self._enabled or not stages:
            return
        if len(self._heap) + self._in_flight >= self.max_pending:
            self.counts["dropped"] += 1
            self._warn("full", f"more than {self.max_pending} webhooks pending; dropping one")
            return
        now = asyncio.get_running_loop().time()
        due = now if self._flushing else now + stages[0].after_s + self.delay_s
        self._push(_Pending(due, next(self._seq), now, stages))

    async def run(self) -> None:
        """POST each callback when due, until cancelled (after `flush`)."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as posts:
            while True:
                if not self._heap or self._unreachable:
                    await self._wait_for_wake(None)
                    continue
                delay = self._heap[0].due - loop.time()
                if delay > 0 and not self._flushing:
                    await self._wait_for_wake(delay)
                    continue
                await self._slots.acquire()
                if not self._heap:  # dropped by a flush that gave up meanwhile
                    self._slots.release()
                    continue
                item = heapq.heappop(self._heap)
                self._in_flight += 1
                posts.create_task(self._post(item))

    def start_flushing(self) -> None:
        """From now on every callback is due at once, delays ignored (the mock is stopping)."""
        self._flushing = True
        for item in self._heap:
            item.due = 0.0
        heapq.heapify(self._heap)
        self._wake.set()

    async def flush(self, until: float) -> None:
        """Send what is pending now, delays ignored, until all was answered 200 or the loop
        time `until`; what is left is dropped, with one WARNING."""
        self.start_flushing()
        loop = asyncio.get_running_loop()
        while (self._heap or self._in_flight) and not self._unreachable:
            left = until - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.02))
        left_over = len(self._heap) + self._in_flight
        if left_over:
            why = "nobody listens there" if self._unreachable else "the shutdown deadline came"
            log.warning(
                "mock %s: %d webhook(s) to %s not sent: %s", self.name, left_over, self.url, why
            )
            self.counts["dropped"] += left_over
            self._heap.clear()

    # -- one POST -------------------------------------------------------------------------------

    async def _post(self, item: _Pending) -> None:
        try:
            if item.body is None:
                item.body = item.stages[item.stage].write(time.time())
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(self.secret, item.body),
            }
            problem: str | None = None
            refused = False
            try:
                response = await self.http.post(
                    self.url, body=item.body, headers=headers, timeout_s=_TIMEOUT_S
                )
            except (HTTPTransportError, RequestTimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                refused = isinstance(exc, HTTPTransportError) and not exc.request_written
            else:
                if response.status != 200:
                    problem = f"HTTP {response.status}"
            if problem is None:
                self.counts["posted"] += 1
                self._next_stage(item)
            else:
                self._again(item, problem, refused=refused)
        finally:
            self._in_flight -= 1
            self._slots.release()

    def _next_stage(self, item: _Pending) -> None:
        if item.stage + 1 >= len(item.stages):
            return
        item.stage += 1
        item.attempts, item.body = 0, None
        loop_time = asyncio.get_running_loop().time()
        due = item.accepted_at + item.stages[item.stage].after_s + self.delay_s
        item.due = loop_time if self._flushing else max(loop_time, due)
        item.seq = next(self._seq)
        self._push(item)

    def _again(self, item: _Pending, problem: str, *, refused: bool) -> None:
        if self._flushing and refused:
            self._unreachable = True
            self._heap.append(item)  # counted as left over by `flush`
            return
        self.counts["retried"] += 1
        delay = backoff_delay_s(item.attempts, base_s=_RETRY_BASE_S, cap_s=_RETRY_CAP_S)
        item.attempts += 1
        item.due = asyncio.get_running_loop().time() + delay
        item.seq = next(self._seq)
        self._push(item)
        self._warn("failed", f"webhook POST to {self.url} failed ({problem}); retrying")

    # -- bookkeeping ----------------------------------------------------------------------------

    def _push(self, item: _Pending) -> None:
        heapq.heappush(self._heap, item)
        self._wake.set()

    async def _wait_for_wake(self, timeout_s: float | None) -> None:
        self._wake.clear()
        await wait_event(self._wake, timeout_s=timeout_s)

    def _warn(self, kind: str, text: str) -> None:
        """At most one WARNING of a kind per `_WARN_EVERY_S`, with how many it stands for."""
        count = self._unwarned.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._warned_at.get(kind, -_WARN_EVERY_S) < _WARN_EVERY_S:
            self._unwarned[kind] = count
            return
        self._unwarned[kind], self._warned_at[kind] = 0, now
        more = f" ({count - 1} more like this since the last such line)" if count > 1 else ""
        log.warning("mock %s: %s%s", self.name, text, more)
