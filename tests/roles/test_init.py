"""The role registry (roles/__init__.py): names resolved to specs, and its lines agreeing with the
specs they load."""

from __future__ import annotations

import pytest

from chat4all_workers.errors import ConfigError
from chat4all_workers.roles import CATALOGUE, resolve_roles


def test_resolve_roles_rejects_unknown_names_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown role 'nosuch'; valid roles: all, router"):
        resolve_roles(["router", "nosuch"])


def test_resolve_roles_all_excludes_the_mocks() -> None:
    names = [s.name for s in resolve_roles(["all"])]

    assert names == ["router", "status_updater", "outbox", "backfill", "merge", "gc", "webhooks"]


def test_registry_lines_agree_with_the_specs_they_load() -> None:
    for name, entry in CATALOGUE.items():
        spec = entry.load()
        assert spec.name == name
        assert (spec.run_once is not None) == entry.periodic, name
