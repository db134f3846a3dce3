"""A partition's bookkeeping: offsets finished out of order, the position a commit may send."""

from __future__ import annotations

from aiokafka import TopicPartition

from chat4all_workers.kafka.partitions import Assignment, Ownership, Partition

TP = TopicPartition("topic", 0)


def fetched(*offsets: int) -> Partition:
    partition = Partition(TP)
    for offset in offsets:
        partition.add(offset)
    return partition


def test_partition_commit_position_stops_at_the_first_unfinished_offset() -> None:
    partition = fetched(10, 11, 12, 13, 14)

    partition.finish(11)
    partition.finish(13)

    assert partition.commit_position is None
    assert partition.to_commit() is None


def test_partition_commit_position_moves_over_offsets_finished_out_of_order() -> None:
    partition = fetched(10, 11, 12, 13, 14)
    partition.finish(11)
    partition.finish(13)

    partition.finish(10)
    after_ten = partition.to_commit()
    partition.finish(12)

    assert after_ten == 12
    assert partition.to_commit() == 14  # 14 itself is still unfinished
    assert partition.finished_uncommitted == 4
    assert list(partition.pending) == [14]


def test_partition_to_commit_is_none_once_a_commit_has_the_position() -> None:
    partition = fetched(0, 1)
    partition.finish(0)

    partition.committed_to(1, covering=1)

    assert partition.to_commit() is None


def test_partition_commit_covers_the_records_finished_when_it_was_sent() -> None:
    partition = fetched(0, 1, 2)
    partition.finish(0)
    partition.finish(1)
    position = partition.to_commit()
    covering = partition.finished_uncommitted
    partition.finish(2)  # finished while the commit was under way

    covered = partition.committed_to(2, covering=covering)

    assert (position, covered) == (2, 2)
    assert partition.finished_uncommitted == 1
    assert partition.to_commit() == 3


def test_partition_commit_of_a_position_already_passed_covers_nothing_again() -> None:
    partition = fetched(0, 1, 2)
    for offset in (0, 1, 2):
        partition.finish(offset)
    partition.committed_to(3, covering=3)

    covered = partition.committed_to(2, covering=2)  # an older commit that finished later

    assert covered == 0


def test_partition_gone_ignores_late_finishes() -> None:
    partition = fetched(0)
    partition.ownership = Ownership.GONE

    partition.finish(0)

    assert partition.to_commit() is None
    assert partition.finished_uncommitted == 0


def test_partition_not_committed_counts_unfinished_and_finished_uncommitted_records() -> None:
    partition = fetched(0, 1, 2, 3)
    partition.finish(0)
    partition.finish(2)  # out of order: still pending behind 1

    assert partition.not_committed() == 4


def test_partition_lag_counts_from_the_commit_position_or_else_the_committed_offset() -> None:
    partition = fetched(5, 6, 7)
    unknown = partition.lag(10)
    partition.committed = 5
    from_committed = partition.lag(10)
    partition.finish(5)
    partition.finish(6)

    assert unknown is None
    assert from_committed == 5
    assert partition.lag(10) == 3
    assert partition.lag(None) is None


def test_assignment_revoke_marks_the_owned_partitions_as_revoking() -> None:
    assignment = Assignment()
    assignment.assign([TP, TopicPartition("topic", 1)])

    leaving = assignment.revoke([TP, TopicPartition("topic", 9)])

    assert [p.tp for p in leaving] == [TP]
    assert leaving[0].ownership is Ownership.REVOKING
    assert assignment.get(TP) is None
    assert len(assignment) == 1


def test_assignment_of_a_partition_revoked_and_assigned_again_is_a_new_partition() -> None:
    assignment = Assignment()
    assignment.assign([TP])
    (old,) = assignment.revoke([TP])

    assignment.assign([TP])

    assert assignment.get(TP) is not old
    assert assignment.partitions() != [old]


def test_assignment_keeps_the_bookkeeping_of_a_partition_assigned_twice() -> None:
    assignment = Assignment()
    assignment.assign([TP])
    first = assignment.get(TP)

    assignment.assign([TP])

    assert assignment.get(TP) is first
