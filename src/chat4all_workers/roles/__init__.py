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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chat4all_workers.config import DLQ_REPLAY_GROUP, Settings
from chat4all_workers.errors import ConfigError
from chat4all_workers.frozen import frozen

if TYPE_CHECKING:
    from chat4all_workers.role import RoleSpec


@frozen
class RoleEntry:
    """One registry line: what `chat4all-workers roles` lists, and `module:attr`, the spec."""

    name: str
    description: str
    spec: str  # "module:attribute" inside chat4all_workers, e.g. "roles.gc:ROLE"
    periodic: bool = False  # runs one pass on a schedule (`run_once`), else long-running
    # Development helpers (the channel mocks) are not part of `--roles all`.
    dev_only: bool = False
    # The role's own settings section (its table in supervisor.toml), if it has one: known
    # without importing the role, so a process need not import roles it does not run.
    section: str | None = None

    def load(self) -> RoleSpec:
        module, _, attr = self.spec.partition(":")
        spec: RoleSpec = getattr(importlib.import_module(f"chat4all_workers.{module}"), attr)
        section = None if spec.settings is None else spec.settings.SECTION
        if (
            spec.name != self.name
            or (spec.run_once is not None) != self.periodic
            or section != self.section
        ):
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
            section="router",
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
            section="outbox",
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
            section="merge",
        ),
        RoleEntry(
            "gc",
            "marks abandoned uploads FAILED and deletes their chunks (periodic)",
            "roles.gc:ROLE",
            section="gc",
            periodic=True,
        ),
        RoleEntry(
            "webhooks",
            "receives Meta's signed webhooks: statuses and users' messages to Kafka",
            "roles.webhooks:ROLE",
            section="webhooks",
        ),
        RoleEntry(
            "whatsapp_mock",
            "simulates the WhatsApp Cloud API on loopback, calling back with signed webhooks "
            "(development)",
            "simulators.roles:WHATSAPP",
            section="mocks",
            dev_only=True,
        ),
        RoleEntry(
            "instagram_mock",
            "simulates the Instagram Messaging API on loopback, calling back with signed "
            "webhooks (development)",
            "simulators.roles:INSTAGRAM",
            section="mocks",
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
            table = settings.sections.get(section) or getattr(settings, section)
            if not getattr(table, name):
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


def load_settings(
    environ: Mapping[str, str],
    toml: Mapping[str, Any] | Path | None = None,
    *,
    overrides: Mapping[str, tuple[str, str]] | None = None,
    roles: Iterable[str] | None = None,
) -> Settings:
    """Settings with the own sections of `roles` (None: every role's, as `config show` wants
    them), each role imported for its section's class; the other roles' tables are accepted
    unread (their own processes check them)."""
    names = list(CATALOGUE) if roles is None else list(roles)
    classes = {}
    for name in names:
        spec = REGISTRY[name]
        if spec.settings is not None:
            classes[spec.settings.SECTION] = spec.settings
    known = {e.section for e in CATALOGUE.values() if e.section is not None}
    return Settings.load(environ, toml, overrides=overrides, sections=classes.values(), known=known)


def load_settings_for_enabled(
    environ: Mapping[str, str],
    toml: Mapping[str, Any] | Path | None = None,
    *,
    overrides: Mapping[str, tuple[str, str]] | None = None,
) -> Settings:
    """Settings for the roles the configuration enables (`roles.enabled`: the shared sections
    name them), with their own sections."""
    shared = load_settings(environ, toml, overrides=overrides, roles=())
    source = shared.sources.get("roles.enabled", "default")
    return load_settings(
        environ, toml, overrides=overrides, roles=resolve_names(shared.roles.enabled, source=source)
    )
