"""The role registry: one line per role, and the one place role names are turned into specs.

A role is one module in this package. Everything that needs the list of roles (`--roles all`,
`chat4all-workers roles`, the deploy checks in the tests) derives it from `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from chat4all_workers.config import Settings
from chat4all_workers.errors import ConfigError
from chat4all_workers.roles import (
    backfill,
    gc,
    merge,
    mocks,
    outbox,
    router,
    status_updater,
    webhooks,
)
from chat4all_workers.roles.base import RoleSpec

REGISTRY: dict[str, RoleSpec] = {
    spec.name: spec
    for spec in (
        router.ROLE,
        status_updater.ROLE,
        outbox.ROLE,
        backfill.ROLE,
        merge.ROLE,
        gc.ROLE,
        webhooks.ROLE,
        mocks.WHATSAPP,
        mocks.INSTAGRAM,
    )
}

ALL = "all"  # every production role (not the development-only mocks)


def production_roles(registry: Mapping[str, RoleSpec] = REGISTRY) -> list[str]:
    """What `all` stands for."""
    return [name for name, spec in registry.items() if not spec.dev_only]


def resolve_roles(
    names: Iterable[str], registry: Mapping[str, RoleSpec] = REGISTRY, *, source: str = "--roles"
) -> list[RoleSpec]:
    """Role names (with `all` for every production role) to specs; unknown names are an error."""
    specs: dict[str, RoleSpec] = {}
    for name in names:
        if name == ALL:
            specs.update({n: registry[n] for n in production_roles(registry)})
        elif name in registry:
            specs[name] = registry[name]
        else:
            valid = ", ".join([ALL, *registry])
            raise ConfigError("roles", source, f"unknown role {name!r}; valid roles: {valid}")
    if not specs:
        raise ConfigError("roles", source, "no role enabled")
    return list(specs.values())


def check_required_settings(settings: Settings, specs: Sequence[RoleSpec]) -> None:
    """Each enabled role's `required_settings` are non-empty, or ConfigError names the key."""
    for spec in specs:
        for key in spec.required_settings:
            section, _, name = key.partition(".")
            if not getattr(getattr(settings, section), name):
                source = settings.sources.get(key, "default")
                raise ConfigError(key, source, f"required by role {spec.name!r} but empty")


def check_restart_overrides(
    settings: Settings, registry: Mapping[str, RoleSpec] = REGISTRY
) -> None:
    """`roles.restart` names only roles that exist (its values were checked when loaded)."""
    for name in settings.roles.restart:
        if name not in registry:
            source = settings.sources.get("roles.restart", "default")
            valid = ", ".join(registry)
            raise ConfigError(f"roles.restart.{name}", source, f"unknown role; valid: {valid}")
