"""How many records the engine has taken and not finished, and which bound each counts against.

A record counts against `max_in_flight` from when it is fetched until it is finished or handed
back; at that bound the engine stops fetching, so memory stays bounded whatever the backlog.
Records that wait count against `kafka.max_held_records` instead, while they fit there:

- a record queued behind its key's head (its conversation's earlier record still runs): it
  does no work until then, and counted in flight it would keep the engine from fetching other
  keys' records (a backlog of a few busy conversations once held most of the 1,000 slots while
  a few hundred heads ran); it moves in flight when it becomes its key's head;
- a key whose handler waits on an outside condition (`held()`, held.py): its head too, so
  records waiting on one paused account do not stop the engine from fetching the others'.

Past that bound they count as in flight, as if they did not wait.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chat4all_workers.kafka.partitions import Scope
from chat4all_workers.waiting import wait_event


@dataclass
class _Hold:
    depth: int  # `held()` blocks entered for this key and not left
    head_held: bool  # whether its head moved to the held count


class Budget:
    def __init__(self, *, max_in_flight: int, max_held_records: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_held_records = max_held_records
        self.in_flight = 0
        self.held = 0
        self._holds: dict[Scope, _Hold] = {}
        self._behind: dict[Scope, int] = {}  # per key: records queued behind it, counted held
        # Set when records stop counting as in flight, or to wake the paused fetch loop.
        self._capacity = asyncio.Event()

    @property
    def room(self) -> int:
        """How many more records may be fetched now."""
        return self.max_in_flight - self.in_flight

    @property
    def taken(self) -> int:
        """Records taken and not finished, held or not (the `in_flight` gauge)."""
        return self.in_flight + self.held

    def wake(self) -> None:
        """Let a fetch loop waiting for capacity look again (a stop, a bug, a revocation)."""
        self._capacity.set()

    async def wait_for_capacity(self, *, timeout_s: float) -> None:
        """Wait until records stop counting as in flight, or `wake()`, or `timeout_s`."""
        self._capacity.clear()
        await wait_event(self._capacity, timeout_s=timeout_s)

    def take(self) -> None:
        """A key's first record (the head of its queue)."""
        self.in_flight += 1

    def queue_behind(self, scope: Scope) -> None:
        """One more record queued behind a key's head: held while there is room."""
        if self.held < self.max_held_records:
            self.held += 1
            self._behind[scope] = self._behind.get(scope, 0) + 1
        else:
            self.in_flight += 1

    def promote(self, scope: Scope) -> None:
        """The key's next record became its head: in flight now (if it was counted held)."""
        behind = self._behind.get(scope, 0)
        if behind:
            self._behind[scope] = behind - 1
            self.held -= 1
            self.in_flight += 1

    def release(self, count: int) -> None:
        """Heads finished. The in-flight gauge is refreshed per fetched batch and per commit
        interval, not here: per record it cost more than the bookkeeping."""
        self.in_flight -= count
        self._capacity.set()

    def drop(self, scope: Scope, count: int) -> None:
        """The key's `count` records left unfinished (handed back): its head and what queued
        behind it, wherever each counted."""
        behind = min(self._behind.pop(scope, 0), count)
        self.held -= behind
        self.in_flight -= count - behind
        self._capacity.set()

    def hold(self, scope: Scope, *, records: int) -> None:
        """The key waits on an outside condition: its head moves from max_in_flight to
        max_held_records, if it fits, and so do the key's `records - 1` queued records that
        still count in flight."""
        hold = self._holds.get(scope)
        if hold is not None:  # the same key held twice (a message's two channels)
            hold.depth += 1
            return
        head_held = self.held < self.max_held_records
        if head_held:
            self.in_flight -= 1
            self.held += 1
        queued = max(0, records - 1 - self._behind.get(scope, 0))
        moved = min(queued, self.max_held_records - self.held)
        if moved > 0:
            self.in_flight -= moved
            self.held += moved
            self._behind[scope] = self._behind.get(scope, 0) + moved
        self._holds[scope] = _Hold(depth=1, head_held=head_held)
        if head_held or moved > 0:
            self._capacity.set()

    def unhold(self, scope: Scope) -> None:
        """Leave one `hold`; leaving the last moves the key's head back in flight (its queued
        records stay held: they still wait behind it)."""
        hold = self._holds[scope]
        hold.depth -= 1
        if hold.depth:
            return
        del self._holds[scope]
        if hold.head_held:
            self.held -= 1
            self.in_flight += 1
