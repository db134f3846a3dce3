"""The import rule of STYLE.md, held by a test: nothing imports `bench/` or `scripts/`, and
`bench/` imports nothing from `tests/`. What both need to run the workers lives in `harness/`, so
`harness/` imports neither `tests/` nor `bench/` (a benchmark would reach `tests/` through it), and
the product imports none of the trees beside it (they are not in the wheel).

Imports are read with `ast`, never executed: every `import`/`from ... import` anywhere in a file
(inside functions and `if TYPE_CHECKING:` too) and `importlib.import_module("...")` of a literal.
"""

from __future__ import annotations

import ast

import pytest

from harness import REPO

# tree -> the top-level packages its files must not import
FORBIDDEN = {
    "src/chat4all_workers": {"bench", "harness", "scripts", "tests"},
    "harness": {"bench", "scripts", "tests"},
    "tests": {"bench", "scripts"},
    "bench": {"scripts", "tests"},
}


def imported_top_levels(source: str) -> set[str]:
    """The top-level packages a module's source imports (relative imports stay in their own
    package, so they are not counted)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def forbidden_imports(tree: str) -> dict[str, list[str]]:
    """{file (relative to the repository): the forbidden packages it imports} over `tree`."""
    files = sorted((REPO / tree).rglob("*.py"))
    assert files, f"no Python file under {tree}/"
    offenders: dict[str, list[str]] = {}
    for path in files:
        bad = imported_top_levels(path.read_text(encoding="utf-8")) & FORBIDDEN[tree]
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    return offenders


def test_imported_top_levels_sees_every_form_of_import() -> None:
    source = """
import tests.support
from tests.stack import StackEndpoints
from . import procs
import importlib

def later() -> None:
    from bench.procs import RssSampler
    importlib.import_module("scripts.thing")
"""

    found = imported_top_levels(source)

    assert found == {"tests", "bench", "importlib", "scripts"}


@pytest.mark.parametrize("tree", list(FORBIDDEN))
def test_tree_imports_nothing_it_must_not(tree: str) -> None:
    offenders = forbidden_imports(tree)

    assert offenders == {}, f"{tree}/ imports {sorted(FORBIDDEN[tree])}: {offenders}"
