"""The collector as `chat4all-workers run` sets it: young collections rarer, start-up frozen,
and cycles made by the work still collected."""

from __future__ import annotations

import gc
import weakref

from chat4all_workers import collector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_tune_raises_only_the_young_threshold(restored_collector: None) -> None:
    _, older, oldest = gc.get_threshold()
    collector.tune()
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, older, oldest)
    collector.tune(5000)
    assert gc.get_threshold() == (5000, older, oldest)


def test_freeze_hides_what_exists_and_still_collects_later_cycles(
    restored_collector: None,
) -> None:
    before = _cycle()  # garbage made before the freeze: collected by it, not frozen
    collector.freeze()
    assert before() is None
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the modules and objects of this process
    later = _cycle()
    assert later() is not None
    gc.collect()
    assert later() is None
    assert gc.get_freeze_count() == frozen
