"""`@frozen`: a value class the type checker holds frozen, a plain dataclass at runtime."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from mypy import api as mypy_api

from chat4all_workers.frozen import frozen

SRC = Path(__file__).resolve().parent.parent / "src"


@frozen(kw_only=True)
class Reading:
    sensor: str
    values: tuple[int, ...] = ()
    tags: list[str] = dataclasses.field(default_factory=list, compare=False)


@frozen(slots=True)
class Pair:
    left: int
    right: int


def test_a_value_is_a_dataclass_compared_and_hashed_by_its_fields() -> None:
    a, b = Reading(sensor="s", values=(1, 2)), Reading(sensor="s", values=(1, 2))
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}
    assert a != Reading(sensor="s", values=(3,))
    assert dataclasses.replace(a, sensor="t") == Reading(sensor="t", values=(1, 2))
    assert [f.name for f in dataclasses.fields(Reading)] == ["sensor", "values", "tags"]
    assert Reading(sensor="s").tags is not Reading(sensor="s").tags  # the factory, each time
    assert repr(Pair(1, 2)) == "Pair(left=1, right=2)"
    assert not hasattr(Pair(1, 2), "__dict__")


def test_keyword_only_is_kept() -> None:
    with pytest.raises(TypeError):
        Reading("s")  # type: ignore[call-arg]


def test_the_type_checker_refuses_assigning_to_a_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from chat4all_workers.frozen import frozen\n\n\n"
        "@frozen\nclass Point:\n    x: int\n\n\n"
        "point = Point(1)\npoint.x = 2\n"
    )
    monkeypatch.setenv("MYPYPATH", str(SRC))  # mypy reads it when run in-process
    out, _, code = mypy_api.run(
        ["--strict", "--no-incremental", "--config-file=", "--cache-dir=/dev/null", str(snippet)]
    )
    assert code == 1
    assert 'snippet.py:10: error: Property "x" defined in "Point" is read-only' in out


def test_no_module_declares_a_frozen_dataclass_itself() -> None:
    """The package's value classes are `@frozen` (made several times per message: a frozen
    dataclass pays `object.__setattr__` per field), so none is `@dataclass(frozen=True)`."""
    found = []
    for path in sorted((SRC / "chat4all_workers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and any(
                k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []
