"""The partitions this member owns, and per partition which of its fetched records are finished.

Records of one partition finish out of order (different keys run concurrently), but its commit
position only moves over records finished in order: it stops at the lowest record not yet
finished, so a commit covers finished work and nothing else, and a crash redelivers exactly the
unfinished records and possibly some finished ones (handlers are idempotent: they deduplicate).

A partition is compared by identity: one revoked and assigned again is a new object, so late
completions of work abandoned at the revocation cannot move the new assignment's position.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition


class Ownership(enum.Enum):
    OWNED = "owned"  # assigned: records start, finish and are committed
    REVOKING = "revoking"  # being revoked: nothing new starts; finishes still count
    GONE = "gone"  # revoked: late finishes of abandoned work move nothing


@dataclass(eq=False)
class Partition:
    """Offsets of one assigned partition, in fetch order, and which of them are finished."""

    tp: TopicPartition
    pending: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    commit_position: int | None = None
    committed: int | None = None
    ownership: Ownership = Ownership.OWNED
    # Records finished in order (below commit_position) that no commit has covered yet.
    finished_uncommitted: int = 0

    @property
    def owned(self) -> bool:
        return self.ownership is Ownership.OWNED

    def add(self, offset: int) -> None:
        self.pending.append(offset)

    def finish(self, offset: int) -> None:
        if self.ownership is Ownership.GONE:
            return
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            done = self.pending.popleft()
            self.finished.discard(done)
            self.commit_position = done + 1
            self.finished_uncommitted += 1

    def to_commit(self) -> int | None:
        """The position a commit should send now; None when no commit has it yet."""
        if self.commit_position is not None and self.commit_position != self.committed:
            return self.commit_position
        return None

    def committed_to(self, position: int, *, covering: int) -> int:
        """A commit of `position`, sent when `covering` records were finished and uncommitted,
        succeeded; how many records it covered for the first time. A commit of a position
        already passed (a concurrent one finished first) covers nothing again."""
        covered = 0
        if self.committed is None or position > self.committed:
            covered = min(covering, self.finished_uncommitted)
            self.finished_uncommitted -= covered
        self.committed = position
        return covered

    def not_committed(self) -> int:
        """Records taken that no commit covers: what is redelivered when the member stops."""
        return len(self.pending) + self.finished_uncommitted

    def lag(self, highwater: int | None) -> int | None:
        """Records between what is committed (or about to be) and the log end `highwater`;
        None while either is unknown."""
        done = self.commit_position if self.commit_position is not None else self.committed
        if highwater is None or done is None:
            return None
        return max(0, highwater - done)


# One key's records of one partition: the unit of order (handled one after another).
Scope = tuple[Partition, bytes]


class Assignment:
    """The partitions this member owns now, by topic-partition."""

    def __init__(self) -> None:
        self._owned: dict[TopicPartition, Partition] = {}

    def __len__(self) -> int:
        return len(self._owned)

    def get(self, tp: TopicPartition) -> Partition | None:
        return self._owned.get(tp)

    def partitions(self) -> list[Partition]:
        return list(self._owned.values())

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Own these too; a partition already owned keeps its bookkeeping."""
        for tp in tps:
            if tp not in self._owned:
                self._owned[tp] = Partition(tp)

    def revoke(self, tps: Iterable[TopicPartition]) -> list[Partition]:
        """Stop owning these: the ones owned leave the assignment, marked as being revoked."""
        leaving = [p for tp in tps if (p := self._owned.pop(tp, None)) is not None]
        for partition in leaving:
            partition.ownership = Ownership.REVOKING
        return leaving
