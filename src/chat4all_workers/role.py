"""What a role is: a name, what it needs, and one coroutine (long-running or one pass).

A new worker is one module in `roles/` that defines a `ROLE = RoleSpec(...)`, plus a line in the
registry. Roles never import the supervisor or each other; they receive a `RoleContext`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chat4all_workers.backoff import OUTAGE_BASE_S, OUTAGE_CAP_S, backoff_delay_s
from chat4all_workers.config import Section, Settings
from chat4all_workers.deadline import ShutdownDeadline
from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.consumer import ConsumerStats
from chat4all_workers.listening import Address, Listening, listen
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.resources import TRANSIENT_ERRORS, Need, Resources
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)
T = TypeVar("T")
# Task groups wrap what their tasks raised; `is_outage` looks inside.
_OUTAGE_SHAPED: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, ExceptionGroup)


class Restart(enum.StrEnum):
    """OTP restart types."""

    PERMANENT = "permanent"  # always restarted; past its intensity the process exits non-zero
    TRANSIENT = "transient"  # restarted only after an abnormal exit; past intensity: left failed
    TEMPORARY = "temporary"  # never restarted


@frozen
class RoleReport:
    """What a role says about its work in the lines an operator follows (reporting.py): the
    ready line, a progress line every `observability.progress_interval_s`, the drain summary.

    Each part is read from where it is counted once (STYLE 11): a consuming role's `engine`
    stats (counted since that engine started: the reporter adds up a restarted role's
    engines), or, for a role without one, `processed_total`; `counts`, running totals of the
    role's own (the router's sends per channel, from the metrics it already keeps), which a
    progress line shows as the change since the last; `state`, current values shown as they
    are (a channel's state, a queue's length, the address it listens on).
    """

    engine: ConsumerStats | None = None
    processed_total: int | None = None  # without an engine; None: nothing to count (gc)
    counts: Mapping[str, int] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RoleContext:
    """Everything a running role may touch."""

    name: str
    settings: Settings
    resources: Resources
    metrics: Metrics
    # Set when the process drains: stop taking work, finish or hand back what is in flight.
    stopping: asyncio.Event
    # Tests: return once the input is exhausted instead of waiting for more.
    drain: bool = False
    # The one shutdown deadline (deadline.py), begun with the stop request; the supervisor
    # shares its own with every child, a context made elsewhere gets one of the configured budget.
    shutdown: ShutdownDeadline = field(init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _published: dict[str, Callable[[], Mapping[str, Any]]] = field(default_factory=dict)
    # How the role reports its work (`report`); None until it says.
    reporter: Callable[[], RoleReport] | None = None
    # Its `RoleSpec.listens` address, bound by the process (App); None: the role binds it.
    listening: Listening | None = None

    def __post_init__(self) -> None:
        self.shutdown = ShutdownDeadline(self.settings.supervisor.shutdown_timeout_s)

    def mark_ready(self) -> None:
        """The role serves now (partitions assigned, socket bound, schedule armed)."""
        self._ready.set()

    def mark_unready(self) -> None:
        """The role stopped serving (it ended, or is about to be restarted)."""
        self._ready.clear()

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def publish(self, section: str, describe: Callable[[], Mapping[str, Any]]) -> None:
        """Show `describe()` (JSON-able, e.g. an object's `stats()`) as `section` of `/readyz`.

        How a role tells operators about its own state (the router's channels) without the
        supervisor knowing anything of it. A section name is unique per process; publishing it
        again replaces it (a restarted role publishes its new objects).
        """
        self._published[section] = describe

    def published(self) -> dict[str, Any]:
        """Every published section, described now."""
        return {section: dict(describe()) for section, describe in self._published.items()}

    def report(self, describe: Callable[[], RoleReport]) -> None:
        """How the role's work is described in the log (reporting.py reads it per line). A
        restarted role reports again with its new objects; the reporter keeps the totals."""
        self.reporter = describe

    @contextlib.asynccontextmanager
    async def sockets(self, address: Address) -> AsyncIterator[list[socket.socket]]:
        """The listening sockets the role serves for the block, closed at its end: copies of the
        ones the process bound at start-up, or, in a context made elsewhere (tests, benchmarks),
        its own, bound now (PortUnavailableError when they cannot be)."""
        if self.listening is not None:
            sockets = self.listening.lend()
        else:
            own = await listen(self.name, address)
            sockets = own.lend()
            own.close()  # the role's are the only ones: its server's stop closes the port
        try:
            yield sockets
        finally:
            for sock in sockets:
                sock.close()


RunFn = Callable[[RoleContext], Awaitable[None]]


@frozen
class RoleSpec:
    name: str  # its line in the registry (roles/__init__.py) describes it
    needs: frozenset[Need]
    # Exactly one of: `run` (long-running, returns when ctx.stopping is set) or `run_once`
    # (one pass of a periodic role, scheduled by `schedule(settings)`, a cron expression).
    run: RunFn | None = None
    run_once: RunFn | None = None
    schedule: Callable[[Settings], str] | None = None
    # A periodic role's preparation once its schedule is armed (scheduling.py).
    arm: Callable[[RoleContext], None] | None = None
    restart: Restart = Restart.PERMANENT
    # Settings that must be non-empty when the role is enabled, e.g. "whatsapp.access_token".
    required_settings: tuple[str, ...] = ()
    # The role's own settings section (a frozen dataclass with `SECTION`), read with
    # `ctx.settings.section(cls)`; its registry line names the same section.
    settings: type[Section] | None = None
    # The address the role serves, bound by the process at start-up (listening.py): a port
    # that cannot be bound stops the start with one line, not the role with a crash.
    listens: Callable[[Settings], Address] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.run_once is None):
            raise ValueError(f"role {self.name}: give exactly one of run or run_once")
        if self.run_once is not None and self.schedule is None:
            raise ValueError(f"role {self.name}: a periodic role needs a schedule")


async def outlast_outages(ctx: RoleContext, call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Await `call`, and again after a backoff for as long as a backing service is unreachable.

    A database restart or a Redis failover is not a bug: crashing on it would spend the
    supervisor's restart budget (a 30 s outage would fail the process) and rebalance every
    consumer. Only once the process is stopping does the outage's error propagate.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except _OUTAGE_SHAPED as exc:
            if ctx.stopping.is_set() or not is_outage(exc):
                raise
            delay = backoff_delay_s(attempt, base_s=OUTAGE_BASE_S, cap_s=OUTAGE_CAP_S)
            attempt += 1
            log.warning(
                "%s: %s failed, a backing service looks unreachable (%s); again in %.1fs",
                ctx.name,
                what,
                describe_outage(exc),
                delay,
            )
            await wait_event(ctx.stopping, timeout_s=delay)


def describe_outage(exc: BaseException) -> str:
    """The error an operator reads: a task group's own errors rather than the group ("unhandled
    errors in a TaskGroup" names none of them), the first of them and how many more."""
    errors = _leaves(exc)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{type(first).__name__}: {first}{more}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def is_outage(exc: BaseException) -> bool:
    """A backing service is unreachable; for a task group's errors, every one of them says so."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(TRANSIENT_ERRORS)
        return rest is None
    return isinstance(exc, TRANSIENT_ERRORS)
