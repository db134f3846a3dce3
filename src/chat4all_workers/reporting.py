"""The lines an operator follows in the log: the process serves, what each role did lately, and
how the drain went.

- Ready: once every role is ready, ONE INFO line: the roles, the operations port, and what each
  role reports (a consuming role's partitions; the router's channels; the webhooks' address).
- Progress: per role, every `observability.progress_interval_s` (0: never), one INFO line:
  records processed since the last line and in all, the rate, dead-lettered, the engine's lag,
  in flight and held, and the role's own figures (the router's answers per channel, the
  outbox's published and pending, the backfill's queue, the webhooks' accepted and refused).
- Drain: at shutdown, per role, the records its engine committed (in all, and during the drain),
  those handed back uncommitted, the seconds it took to stop; then a total. INFO, or WARNING
  when something was cancelled at a deadline.

Kept apart from the supervisor, like readiness.py: it reads self-descriptions and counts
nothing itself. A role's figures come from its report (`RoleContext.report`: the engine's
`stats()`, the role's objects), dead-lettered records from `dlq_messages_total{source=role}`
(the one count /metrics shows too), stop times from the supervisor's `stats()`. An engine
counts from zero; a restarted role reports a new one, and the reporter carries the old one's
counts, so totals stay totals. Each line has an `event` field (ready, progress, drain,
drain_total) and its figures as fields: `jq 'select(.event == "progress")'`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.consumer import ConsumerStats
from chat4all_workers.observability.logging import flush_repeats, log_context
from chat4all_workers.observability.metrics import Metrics, total
from chat4all_workers.readiness import ChildStats
from chat4all_workers.role import RoleContext, RoleReport
from chat4all_workers.waiting import wait_event

log = logging.getLogger(__name__)


@dataclass
class _Tally:
    """One role's figures as the last line told them, and what replaced engines counted."""

    source: Callable[[], RoleReport] | None = None
    carried_finished: int = 0
    carried_committed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    counts: dict[str, int] = field(default_factory=dict)


@frozen
class _Reading:
    """A role's report, with its totals over the process's life."""

    report: RoleReport
    processed_total: int | None
    committed_total: int
    dead_lettered_total: int


@dataclass(eq=False, kw_only=True)
class Reporter:
    """`await reporter.run()` writes the ready and progress lines until `stopping`;
    `drain_summary()` the drain's, once the roles have stopped."""

    contexts: Mapping[str, RoleContext]
    children: Callable[[], Sequence[ChildStats]]
    metrics: Metrics
    interval_s: float
    operations_port: int | None
    stopping: asyncio.Event
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._tallies = {name: _Tally() for name in self.contexts}
        self._last_line_at = self.clock()

    async def run(self) -> None:
        if not await self._until_ready():
            return
        self.ready_line()
        if self.interval_s <= 0:
            return
        while not self.stopping.is_set():
            await wait_event(self.stopping, timeout_s=self.interval_s)
            if not self.stopping.is_set():
                self.progress_lines()

    async def _until_ready(self) -> bool:
        """True once every role is ready (at that moment, not a poll later: a stop that follows
        at once still finds the line written); False if the process stops first."""
        contexts = self.contexts.values()
        async with asyncio.TaskGroup() as tasks:
            stop = tasks.create_task(self.stopping.wait())
            try:
                while not all(ctx.is_ready for ctx in contexts):
                    waits = [tasks.create_task(c.wait_ready()) for c in contexts if not c.is_ready]
                    await asyncio.wait([stop, *waits], return_when=asyncio.FIRST_COMPLETED)
                    for wait in waits:
                        wait.cancel()
                    if stop.done():
                        return all(ctx.is_ready for ctx in contexts)
                return True
            finally:
                stop.cancel()

    # -- the lines ----------------------------------------------------------------------------

    def ready_line(self) -> None:
        roles: dict[str, dict[str, Any]] = {}
        for name in self.contexts:
            reading = self._read(name)
            roles[name] = {} if reading is None else _described(reading.report)
        parts = [f"roles {','.join(roles)}", f"operations port {self.operations_port}"]
        parts += [f"{name} {_pairs(figures)}" for name, figures in roles.items() if figures]
        fields = {"event": "ready", "operations_port": self.operations_port, "roles": roles}
        log.info("ready: %s", "; ".join(parts), extra={"fields": fields})

    def progress_lines(self) -> None:
        now = self.clock()
        elapsed_s = max(now - self._last_line_at, 1e-9)
        self._last_line_at = now
        for name in self.contexts:
            reading = self._read(name)
            if reading is None or reading.processed_total is None:
                continue  # nothing it counts (a periodic role: its passes say what they did)
            fields = self._progress(name, reading, elapsed_s)
            with log_context(service=name):
                log.info("progress: %s", _pairs(fields), extra={"fields": fields})

    def _progress(self, name: str, reading: _Reading, elapsed_s: float) -> dict[str, Any]:
        tally = self._tallies[name]
        assert reading.processed_total is not None
        processed = reading.processed_total - tally.processed
        fields: dict[str, Any] = {
            "event": "progress",
            "role": name,
            "processed": processed,
            "rate_per_s": round(processed / elapsed_s, 2),
            "processed_total": reading.processed_total,
            "dead_lettered": reading.dead_lettered_total - tally.dead_lettered,
            "dead_lettered_total": reading.dead_lettered_total,
        }
        tally.processed = reading.processed_total
        tally.dead_lettered = reading.dead_lettered_total
        engine = reading.report.engine
        if engine is not None:
            fields |= {
                "lag": engine.lag,
                "in_flight": engine.in_flight,
                "held": engine.held,
                "partitions": engine.assigned,
            }
        for key, value in reading.report.counts.items():
            fields[key] = value - tally.counts.get(key, 0)
            fields[f"{key}_total"] = value
            tally.counts[key] = value
        fields |= reading.report.state
        fields["interval_s"] = round(elapsed_s, 1)
        return fields

    def drain_summary(self) -> None:
        """One line per role and a total; WARNING when a deadline cancelled something."""
        flush_repeats()  # what the repeat limiter still owes comes before the summary
        committed = handed_back = cancelled = 0
        longest_s = 0.0
        for child in self.children():
            reading = self._read(child.role)
            engine = reading.report.engine if reading is not None else None
            fields: dict[str, Any] = {
                "event": "drain",
                "role": child.role,
                "drain_s": round(child.stop_s or 0.0, 2),
            }
            text = f"{child.role} stopped in {child.stop_s or 0.0:.1f} s"
            role_cancelled = 1 if child.cancelled else 0
            if engine is not None and reading is not None:
                fields |= {
                    "committed_total": reading.committed_total,
                    "committed_in_drain": engine.committed_in_drain,
                    "handed_back": engine.handed_back,
                }
                text += (
                    f"; committed {reading.committed_total} records "
                    f"({engine.committed_in_drain} during the drain), "
                    f"handed back {engine.handed_back} uncommitted"
                )
                committed += reading.committed_total
                handed_back += engine.handed_back
                role_cancelled += engine.cancelled
                if engine.cancelled:
                    text += f"; {engine.cancelled} handler(s) cancelled at the drain deadline"
            if child.cancelled:
                text += "; cancelled at the hand-back deadline"
            fields["cancelled"] = role_cancelled
            cancelled += role_cancelled
            longest_s = max(longest_s, child.stop_s or 0.0)
            level = logging.WARNING if role_cancelled else logging.INFO
            with log_context(service=child.role):
                log.log(level, "drain: %s", text, extra={"fields": fields})
        fields = {
            "event": "drain_total",
            "drain_s": round(longest_s, 2),
            "committed_total": committed,
            "handed_back": handed_back,
            "cancelled": cancelled,
        }
        verdict = f"{cancelled} cancelled at a deadline" if cancelled else "nothing cancelled"
        log.log(
            logging.WARNING if cancelled else logging.INFO,
            "drain done in %.1f s: %d records committed, %d handed back uncommitted, %s",
            longest_s,
            committed,
            handed_back,
            verdict,
            extra={"fields": fields},
        )

    # -- reading the roles --------------------------------------------------------------------

    def _read(self, name: str) -> _Reading | None:
        describe = self.contexts[name].reporter
        if describe is None:
            return None
        tally = self._tallies[name]
        try:
            if tally.source is not None and describe is not tally.source:
                self._carry(tally, tally.source().engine)  # a restart: the old engine's counts
            tally.source = describe
            report = describe()
        except Exception:  # a report's bug must not take the process down: logged, left out
            log.exception("%s: its report failed; its log lines leave it out", name)
            return None
        engine = report.engine
        processed = report.processed_total
        committed = tally.carried_committed
        if engine is not None:
            processed = tally.carried_finished + engine.finished_total
            committed += engine.committed_total
        dead_lettered = total(self.metrics.dlq_messages, source=name)
        return _Reading(report, processed, committed, dead_lettered)

    @staticmethod
    def _carry(tally: _Tally, engine: ConsumerStats | None) -> None:
        if engine is not None:
            tally.carried_finished += engine.finished_total
            tally.carried_committed += engine.committed_total


def _described(report: RoleReport) -> dict[str, Any]:
    """What the ready line says of a role: its partitions, its state."""
    figures: dict[str, Any] = {}
    if report.engine is not None:
        figures["partitions"] = report.engine.assigned
        figures["topics"] = list(report.engine.topics)
    return figures | dict(report.state)


def _pairs(fields: Mapping[str, Any]) -> str:
    """`key=value ...`, the line's figures as text (the fields carry them as JSON)."""
    shown = {k: v for k, v in fields.items() if k not in ("event", "role")}
    return " ".join(f"{k}={_text(v)}" for k, v in shown.items())


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
