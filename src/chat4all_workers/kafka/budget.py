"""How many records the engine has taken and not finished, and which bound each counts against.

A record counts against `max_in_flight` from when it is fetched until it is finished or handed
back; at that bound the engine pauses fetching, so memory stays bounded whatever the backlog.
A key whose handler waits on an outside condition (`held()`, held.py) moves its records to
`kafka.max_held_records` while they fit there, so records waiting on one paused channel do not
stop the engine from fetching the other channel's. Past that bound they count as in flight
again, as if not held.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from chat4all_workers.kafka.partitions import Scope
from chat4all_workers.waiting import wait_event


@dataclass
class _Hold:
    depth: int  # `held()` blocks entered for this key and not left
    count: int  # its records counted as held


class Budget:
    def __init__(self, *, max_in_flight: int, max_held_records: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_held_records = max_held_records
        self.in_flight = 0
        self.held = 0
        self._holds: dict[Scope, _Hold] = {}
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
        """One more record queued behind a key's head: held with the key while there is room."""
        hold = self._holds.get(scope)
        if hold is not None and self.held < self.max_held_records:
            hold.count += 1
            self.held += 1
        else:
            self.in_flight += 1

    def release(self, count: int) -> None:
        """Records finished or abandoned. The in-flight gauge is refreshed per fetched batch
        and per commit interval, not here: per record it cost more than the bookkeeping."""
        self.in_flight -= count
        self._capacity.set()

    def hold(self, scope: Scope, *, records: int) -> None:
        """The key's `records` (its queue, head included) move from max_in_flight to
        max_held_records, if they fit."""
        hold = self._holds.get(scope)
        if hold is not None:  # the same key held twice (a message's two channels)
            hold.depth += 1
            return
        count = records
        if self.held + count > self.max_held_records:
            count = 0  # no room: they count as in flight, as without `held()`
        self._holds[scope] = _Hold(depth=1, count=count)
        self.in_flight -= count
        self.held += count
        if count:
            self._capacity.set()

    def unhold(self, scope: Scope) -> None:
        """Leave one `hold`; leaving the last moves the key's held records back in flight."""
        hold = self._holds[scope]
        hold.depth -= 1
        if hold.depth:
            return
        del self._holds[scope]
        self.held -= hold.count
        self.in_flight += hold.count
