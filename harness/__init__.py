"""What the tests and the benchmarks both need to run the workers against the real stack.

The stack's endpoints (`stack.py`), a deployment of one's own on it (`deployment.py`: every
topic, a migrated database, a bucket, a Redis key prefix, free ports), `chat4all-workers run` as
real OS processes (`processes.py`), messages written as the platform's API writes them
(`pipeline.py`), a topic read back (`topics.py`) and waiting on a condition (`waiting.py`).

Its own package, beside `tests/` and `bench/`, because both use it and `bench/` imports nothing
from `tests/` (STYLE.md; tests/bench/test_bench_imports.py holds the line). It imports only the
product and its libraries, never `tests/` or `bench/`, and the product never imports it: it is
not in the wheel (pyproject's `[tool.hatch.build.targets.wheel]` ships `src/chat4all_workers`
alone) nor in the image (.dockerignore). pytest finds it through `pythonpath`; a benchmark run as
`python bench/<name>.py` puts the repository root on `sys.path` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

# The checkout the harness runs from (supervisor.toml, scripts/devstack, bench/).
REPO: Final = Path(__file__).resolve().parent.parent
