"""`@frozen`: the package's immutable value classes, frozen where it is checked and cheap to make.

A `@dataclass(frozen=True)` writes each field at construction through `object.__setattr__`, so
its instances cost about 0.09 µs a field more to make than a plain dataclass's (7 fields: 0.86
against 0.19 µs), and the router makes several for every message it sends (the record, the
message, what is sent, the claim, the records it produces, ...). Measured 2026-12-07 with every
value class of the package made plain at runtime: the router's CPU per message fell by about a
tenth (bench/router.py, alternating turns against the frozen tree).

`@frozen` is that plain dataclass, declared to the type checker as frozen (PEP 681's
`frozen_default`): assigning to a field of one is a `mypy --strict` error, as it is for a frozen
dataclass, and `make lint` checks the package, its tests, harness and benches. What it does not
do is raise `FrozenInstanceError` at runtime for code no type checker reads. Instances hash by
their fields, as frozen ones do (`unsafe_hash`: the fields are never reassigned, so it is safe).
`dataclasses.replace`, `fields` and `asdict` work as on any dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


@overload
def frozen(cls: type[_T], /) -> type[_T]: ...


@overload
def frozen(*, kw_only: bool = False, slots: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen(
    cls: type[_T] | None = None, /, *, kw_only: bool = False, slots: bool = False
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """A dataclass that the type checker holds frozen; `kw_only` and `slots` as dataclass's."""

    def make(cls: type[_T]) -> type[_T]:
        return dataclasses.dataclass(cls, unsafe_hash=True, kw_only=kw_only, slots=slots)

    return make if cls is None else make(cls)
