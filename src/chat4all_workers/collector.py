"""Python's cyclic garbage collector, set for a long-running worker process.

Why: with the interpreter's defaults (a young collection every 700 new container objects), the
router spent about a quarter of its CPU in the collector (bench/router.py, 10,000 messages: 1.0
s of 3.8 s), the webhooks role 15 %, and the role's full collections, 50-75 ms each, made its
ack p99. A worker keeps a thousand records in flight, each a few dozen objects alive for
milliseconds: at every young collection most of them are still alive, so they are promoted, and
the old generations fill with objects that die soon after, each one traversed again by the next
full collection, together with every module, pool and setting made at start-up.

So `chat4all-workers run` (and each bench's worker, to measure what runs) does two things:
- `tune()` before start-up: a young collection once `YOUNG_THRESHOLD` more container objects
  are alive than at the last one, not 700. In-flight work then dies young, between two
  collections, instead of being promoted; cyclic garbage waits longer (at most that many
  objects, a few MB).
- `freeze()` once every role has started: what start-up made is moved out of the collector's
  sight (`gc.freeze`), so a full collection walks only what the work made. A cycle made at
  start-up and dropped later is not collected: start-up makes few, once.

Reference cycles are still collected; reference counting, which frees nearly everything, is
untouched. Embedded use (`App` in a test, or another program's event loop) leaves the
collector as its host set it: the process's owner decides.
"""

from __future__ import annotations

import gc

# Above what a worker's in-flight work holds (kafka.max_in_flight records of a few dozen objects
# each). The router's collector CPU over 60,000 messages with a 50 ms provider (bench/router.py
# b): 1.3 s at 10,000, 0.45 s at 20,000, 0.23 s at 50,000, 0.16 s at 100,000, of 15-17 s; the
# router's peak RSS was 119-123 MB with each. The count is of objects alive, not allocated
# (CPython counts a freed object back), so what is freed by reference counting never adds up.
YOUNG_THRESHOLD = 50_000


def tune(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Collect the young generation once `young_threshold` more objects are alive than at
    the last collection (the older generations' thresholds are kept)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


def freeze() -> None:
    """Everything alive now is permanent: full collections no longer walk it."""
    gc.collect()
    gc.freeze()
