"""What a handler that waits on an outside condition tells the engine: `held()` and
`wait_unless_handed_back`.

The router's sends wait on outside conditions: a paused channel, a recipient's pair limit, the
provider's word on a send in doubt. While a handler is inside `held()` its key's records count
against `kafka.max_held_records` instead of `max_in_flight` (budget.py), so a thousand records
waiting on one paused channel do not stop the engine from fetching the other channel's. A held
record is still unfinished: it holds its partition's commit position where it is, and a crash
redelivers it and everything after it (the handlers' dedup markers make that harmless).

Such a handler waits with `wait_unless_handed_back`, which returns at once when its record is to
be handed back (its partition revoked, the engine stopping), instead of being waited for and
then cancelled. Both find their key worker through a context variable the engine sets in each
key worker's task; called anywhere else (a test calling a handler directly) they do nothing
special.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator

from chat4all_workers.frozen import frozen
from chat4all_workers.kafka.budget import Budget
from chat4all_workers.kafka.draining import Drain
from chat4all_workers.kafka.partitions import Scope
from chat4all_workers.kafka.records import ConsumedRecord
from chat4all_workers.waiting import wait_event


@frozen
class KeyWorker:
    """One key's worker in an engine: its records (`queue`, the one being handled first)."""

    budget: Budget
    drain: Drain
    scope: Scope
    queue: deque[ConsumedRecord]


_key_worker: contextvars.ContextVar[KeyWorker | None] = contextvars.ContextVar(
    "chat4all_key_worker", default=None
)


def enter_key_worker(worker: KeyWorker) -> None:
    """Called first thing in a key worker's task (its own context): what `held()` finds."""
    _key_worker.set(worker)


@contextlib.asynccontextmanager
async def held() -> AsyncIterator[None]:
    """While inside, this key's records count against `kafka.max_held_records`, not
    `max_in_flight`: for a handler that waits on an outside condition, so the wait does not
    starve other keys. Outside a key worker of an engine (a test calling the handler directly),
    it does nothing."""
    worker = _key_worker.get()
    if worker is None:
        yield
        return
    worker.budget.hold(worker.scope, records=len(worker.queue))
    try:
        yield
    finally:
        worker.budget.unhold(worker.scope)


async def wait_unless_handed_back(delay_s: float) -> bool:
    """Sleep up to `delay_s` in a key worker; True, at once, when this key's record is being
    handed back meanwhile (its partition revoked, the engine stopping or stopped by a bug): for a
    handler that waits a long while on an outside condition (the router waiting for the
    provider's word), so a revocation does not wait for it (a third of
    `kafka.rebalance_timeout_ms`) and then cancel it. Outside a key worker, a plain sleep."""
    worker = _key_worker.get()
    if worker is None:
        await asyncio.sleep(delay_s)
        return False
    partition, _ = worker.scope
    if worker.drain.hands_back(partition):
        return True
    await wait_event(worker.drain.wakeup, timeout_s=delay_s)
    return worker.drain.hands_back(partition)
