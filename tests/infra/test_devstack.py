"""scripts/devstack's own logic, without starting anything (it is loaded as a module)."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from harness import REPO


def load_devstack() -> ModuleType:
    path = REPO / "scripts" / "devstack"
    loader = importlib.machinery.SourceFileLoader("devstack_script", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_a_kafka_cluster_id_never_begins_with_a_dash_the_tools_read_as_an_option() -> None:
    # One URL-safe base64 id in 64 begins with "-": `kafka-storage format -t -STd...` failed
    # with "expected one argument" (a fresh clone's own-stack test, once).
    devstack = load_devstack()
    ids = [devstack.kafka_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)


def test_the_broker_count_is_recorded_whole_for_readers_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test workers run `up` at the same time: one read the record empty while another
    # wrote it, and `up` failed with int('') (a CI-like run, about one in ten).
    monkeypatch.setenv("DEVSTACK_HOME", str(tmp_path))
    monkeypatch.delenv("DEVSTACK_KAFKA_BROKERS", raising=False)
    devstack = load_devstack()
    devstack.RUN.mkdir(parents=True)
    devstack._record_brokers(1)
    writing = threading.Event()

    def record_again() -> None:
        while not writing.is_set():
            devstack._record_brokers(1)

    writer = threading.Thread(target=record_again)
    writer.start()
    try:
        read = [devstack._recorded_brokers() for _ in range(20_000)]
    finally:
        writing.set()
        writer.join()

    assert set(read) == {1}
    assert [p.name for p in devstack.RUN.iterdir()] == ["kafka-brokers"]  # no partial left


def test_an_empty_devstack_home_is_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_HOME", "")  # not the working directory (Path("") is)

    devstack = load_devstack()

    assert devstack.HOME == REPO / ".devstack"


def test_devstack_into_a_pipe_its_reader_closed_exits_141_without_a_traceback() -> None:
    # `devstack status | head -1` once printed a BrokenPipeError traceback. Here the reader is
    # gone before the first write: `status` only reads the ports, and starts nothing.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "devstack"), "status"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)

    assert (run.returncode, run.stderr) == (141, "")
