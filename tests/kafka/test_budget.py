"""The in-flight and held counts: what a key inside `held()` counts against."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from chat4all_workers.kafka.budget import Budget
from chat4all_workers.kafka.partitions import Partition, Scope

PARTITION = Partition(TopicPartition("topic", 0))


def scope(key: bytes) -> Scope:
    return (PARTITION, key)


def taken(budget: Budget, key: bytes, records: int) -> Scope:
    """A key's head record and `records - 1` queued behind it."""
    budget.take()
    for _ in range(records - 1):
        budget.queue_behind(scope(key))
    return scope(key)


def test_budget_counts_a_keys_head_in_flight_and_what_queues_behind_it_held() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)

    taken(budget, b"a", 3)

    assert (budget.in_flight, budget.held, budget.room, budget.taken) == (1, 2, 9, 3)


def test_budget_records_queued_behind_count_in_flight_past_max_held_records() -> None:
    budget = Budget(max_in_flight=10, max_held_records=2)

    taken(budget, b"a", 4)

    assert (budget.in_flight, budget.held) == (2, 2)


def test_budget_promote_moves_the_next_head_in_flight() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    key = taken(budget, b"a", 3)

    budget.release(1)  # the head finished
    budget.promote(key)  # the next one runs

    assert (budget.in_flight, budget.held) == (1, 1)


def test_budget_drop_takes_a_keys_unfinished_records_off_both_counts() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    key = taken(budget, b"a", 3)
    taken(budget, b"b", 1)

    budget.drop(key, 3)  # handed back: its head and the two behind it

    assert (budget.in_flight, budget.held) == (1, 0)


def test_budget_hold_moves_a_keys_head_to_held() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    key = taken(budget, b"a", 3)
    taken(budget, b"b", 1)

    budget.hold(key, records=3)

    assert (budget.in_flight, budget.held) == (1, 3)


def test_budget_unhold_moves_the_head_back_in_flight_and_leaves_the_queue_held() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    key = taken(budget, b"a", 3)
    budget.hold(key, records=3)

    budget.unhold(key)

    assert (budget.in_flight, budget.held) == (1, 2)


def test_budget_key_held_twice_counts_once_until_both_holds_are_left() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    key = taken(budget, b"a", 2)
    budget.hold(key, records=2)
    budget.hold(key, records=2)  # a message's two channels

    budget.unhold(key)
    after_one = (budget.in_flight, budget.held)
    budget.unhold(key)

    assert after_one == (0, 2)
    assert (budget.in_flight, budget.held) == (1, 1)


def test_budget_hold_past_max_held_records_counts_the_records_as_in_flight() -> None:
    budget = Budget(max_in_flight=10, max_held_records=2)
    first = taken(budget, b"a", 1)
    second = taken(budget, b"b", 1)
    budget.hold(first, records=1)
    budget.hold(second, records=1)
    third = taken(budget, b"c", 1)

    budget.hold(third, records=1)  # 2 held already: no room

    assert (budget.in_flight, budget.held) == (1, 2)


def test_budget_hold_moves_queued_records_that_counted_in_flight() -> None:
    budget = Budget(max_in_flight=10, max_held_records=3)
    other = taken(budget, b"x", 3)  # 2 held behind it
    key = taken(budget, b"a", 3)  # 1 behind held (the bound), 1 behind in flight
    budget.drop(other, 3)  # room again in the held count

    budget.hold(key, records=3)

    assert (budget.in_flight, budget.held) == (0, 3)


def test_budget_release_counts_records_out_of_flight() -> None:
    budget = Budget(max_in_flight=10, max_held_records=100)
    taken(budget, b"a", 1)
    taken(budget, b"b", 1)

    budget.release(2)

    assert budget.in_flight == 0


async def test_budget_release_wakes_a_fetch_loop_waiting_for_capacity() -> None:
    budget = Budget(max_in_flight=1, max_held_records=100)
    taken(budget, b"a", 1)

    async with asyncio.timeout(5), asyncio.TaskGroup() as tasks:
        waiting = tasks.create_task(budget.wait_for_capacity(timeout_s=60))
        await asyncio.sleep(0)  # the fetch loop is waiting
        budget.release(1)

    assert waiting.done()
    assert budget.room == 1


async def test_budget_wait_for_capacity_ignores_a_wake_from_before_it_began() -> None:
    budget = Budget(max_in_flight=1, max_held_records=100)
    loop = asyncio.get_running_loop()
    budget.wake()  # an old wake-up: the loop has looked since
    began = loop.time()

    async with asyncio.timeout(5):
        await budget.wait_for_capacity(timeout_s=0.05)

    assert loop.time() - began >= 0.05
