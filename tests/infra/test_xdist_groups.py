"""`make test` runs the `faults` tests on one pytest-xdist worker (`--dist loadgroup`, their
`xdist_group`): they break a stack of their own, started once by that worker. pytest 9.2
silently stopped pytest-xdist's grouping (pytest-dev/pytest-xdist#1386): each worker then ran
some of them and started a stack of its own. This checks, in a pytest run of its own with the
installed pytest and pytest-xdist, that a group's tests all run on one worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GROUPED = 8
OTHERS = 8

_TESTS = f"""
import os
from pathlib import Path

import pytest

OUT = Path(__file__).parent / "workers"


@pytest.mark.xdist_group("faults")
@pytest.mark.parametrize("i", range({GROUPED}))
def test_grouped(i):
    (OUT / f"grouped-{{i}}").write_text(os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.parametrize("i", range({OTHERS}))
def test_other(i):
    (OUT / f"other-{{i}}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_a_groups_tests_run_on_one_worker_under_dist_loadgroup(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "test_groups.py").write_text(_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of this project's options
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    args = ["-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    def workers(kind: str) -> set[str]:
        return {p.read_text() for p in (tmp_path / "workers").glob(f"{kind}-*")}

    assert len(list((tmp_path / "workers").iterdir())) == GROUPED + OTHERS
    assert len(workers("grouped")) == 1, f"group `faults` ran on {sorted(workers('grouped'))}"
    # The run did use several workers: one worker for everything would prove nothing.
    assert len(workers("grouped") | workers("other")) > 1
