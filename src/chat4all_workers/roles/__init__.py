"""The role registry: one line per role, and the one place role names are turned into specs.

A role is one module in this package. Everything that needs the list of roles (`--roles all`,
`chat4all-workers roles`, the deploy checks in the tests) derives it from `CATALOGUE`.

A catalogue line says what the role is (name, description, periodic or not, development-only)
and where its `RoleSpec` lives; the spec itself (what it needs, the coroutine) is imported only
when it is asked for (`REGISTRY[name]`, `resolve_roles`). Importing a role pulls in its clients
(aiokafka, redis, asyncpg, miniopy, aiohttp: about half a second), which `config show`,
`roles` and a usage error never need. So this module imports no role and no client.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chat4all_workers.config import DLQ_REPLAY_GROUP
from chat4all_workers.errors import ConfigError

if TYPE_CHECKING:
    from chat4all_workers.config import Settings
    from chat4all_workers.role import RoleSpec


@dataclass(frozen=True)
class RoleEntry:
    """One registry line: what `chat4all-workers roles` lists, and `module:attr`, the spec."""

    name: str
    description: str
    spec: str  # "module:attribute" inside chat4all_workers, e.g. "roles.gc:ROLE"
    periodic: bool = False  # runs one pass on a schedule (`run_once`), else long-running
    # Development helpers (the channel mocks) are not part of `--roles all`.
    dev_only: bool = False

    def load(self) -> RoleSpec:
        module, _, attr = self.spec.partition(":")
        spec: RoleSpec = getattr(importlib.import_module(f"chat4all_workers.{module}"), attr)
        if spec.name != self.name or (spec.run_once is not None) != self.periodic:
            raise AssertionError(f"registry line {self.name!r} disagrees with {self.spec}")
        return spec


CATALOGUE: dict[str, RoleEntry] = {
    entry.name: entry
    for entry in (
        RoleEntry(
            "router",
            "sends message_processing records to WhatsApp/Instagram at the provider's pace, "
            "deduplicated, retried",
            "roles.router:ROLE",
        ),
        RoleEntry(
            "status_updater",
            "applies message_status_updates to messages and their history",
            "roles.status_updater:ROLE",
        ),
        RoleEntry(
            "outbox",
            "publishes outbox_events rows to Kafka in per-aggregate order",
            "roles.outbox:ROLE",
        ),
        RoleEntry(
            "backfill",
            "moves records parked in the Redis fallback list back into Kafka",
            "roles.backfill:ROLE",
        ),
        RoleEntry(
            "merge",
            "merges uploaded chunks into one S3 object and emits file_upload_completed",
            "roles.merge:ROLE",
        ),
        RoleEntry(
            "gc",
            "marks abandoned uploads FAILED and deletes their chunks (periodic)",
            "roles.gc:ROLE",
            periodic=True,
        ),
        RoleEntry(
            "webhooks",
            "receives Meta's signed webhooks: statuses and users' messages to Kafka",
            "roles.webhooks:ROLE",
        ),
        RoleEntry(
            "whatsapp_mock",
            "simulates the WhatsApp Cloud API on loopback, calling back with signed webhooks "
            "(development)",
            "simulators.roles:WHATSAPP",
            dev_only=True,
        ),
        RoleEntry(
            "instagram_mock",
            "simulates the Instagram Messaging API on loopback, calling back with signed "
            "webhooks (development)",
            "simulators.roles:INSTAGRAM",
            dev_only=True,
        ),
    )
}

ALL = "all"  # every production role (not the development-only mocks)


class _Registry(Mapping[str, "RoleSpec"]):
    """The catalogue's specs, each imported on first access (see the module docstring)."""

    def __init__(self, catalogue: Mapping[str, RoleEntry]) -> None:
        self._catalogue = catalogue
        self._loaded: dict[str, RoleSpec] = {}

    def __getitem__(self, name: str) -> RoleSpec:
        if name not in self._loaded:
            self._loaded[name] = self._catalogue[name].load()
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._catalogue)

    def __len__(self) -> int:
        return len(self._catalogue)

    def __contains__(self, name: object) -> bool:
        return name in self._catalogue


REGISTRY: Mapping[str, RoleSpec] = _Registry(CATALOGUE)


def production_roles() -> list[str]:
    """What `all` stands for."""
    return [name for name, entry in CATALOGUE.items() if not entry.dev_only]


def resolve_names(
    names: Iterable[str], known: Iterable[str] = CATALOGUE, *, source: str = "--roles"
) -> list[str]:
    """Role names (with `all` for every production role) checked against `known`, without
    importing any role; unknown names are an error."""
    known = list(known)
    resolved: dict[str, None] = {}
    for name in names:
        if name == ALL:
            resolved.update(dict.fromkeys(production_roles()))
        elif name in known:
            resolved[name] = None
        else:
            valid = ", ".join([ALL, *known])
            raise ConfigError("roles", source, f"unknown role {name!r}; valid roles: {valid}")
    if not resolved:
        raise ConfigError("roles", source, "no role enabled")
    return list(resolved)


def resolve_roles(
    names: Iterable[str], registry: Mapping[str, RoleSpec] = REGISTRY, *, source: str = "--roles"
) -> list[RoleSpec]:
    """Role names (with `all` for every production role) to specs; unknown names are an error."""
    return [registry[name] for name in resolve_names(names, registry, source=source)]


def check_required_settings(settings: Settings, specs: Sequence[RoleSpec]) -> None:
    """Each enabled role's `required_settings` are non-empty, or ConfigError names the key."""
    for spec in specs:
        for key in spec.required_settings:
            section, _, name = key.partition(".")
            if not getattr(getattr(settings, section), name):
                source = settings.sources.get(key, "default")
                raise ConfigError(key, source, f"required by role {spec.name!r} but empty")


def check_role_keys(settings: Settings, known: Iterable[str] = CATALOGUE) -> None:
    """Settings keyed by role name name only roles that exist: `roles.restart` and
    `kafka.groups` (which also takes `dlq replay`'s group). A misspelt key would otherwise be
    ignored: a restart type never applied, or a group override never used, so that the role
    re-reads its whole topic from a group of its own."""
    known = list(known)
    keyed = (
        ("roles.restart", settings.roles.restart, known),
        ("kafka.groups", settings.kafka.groups, [*known, DLQ_REPLAY_GROUP]),
    )
    for setting, values, valid_names in keyed:
        for name in values:
            if name not in valid_names:
                source = settings.sources.get(setting, "default")
                valid = ", ".join(valid_names)
                raise ConfigError(f"{setting}.{name}", source, f"unknown role; valid: {valid}")
