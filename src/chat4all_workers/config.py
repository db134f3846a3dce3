"""Typed, frozen settings, built once at the edge of the process.

There is exactly one loader, `Settings.load`. A value comes from, in order of precedence: a CLI
flag, the environment, `supervisor.toml`, the field's default. Each field of a section dataclass
is one setting; its TOML key is `section.field`, its environment name is the legacy name from the
platform's documentation when there is one (`metadata={"env": ...}`) and
`CHAT4ALL_<SECTION>_<FIELD>` otherwise, so every key can be overridden in a container without a
file. Everything below `cli.py` receives these values and never reads `os.environ`.

The shared sections (what more than one role, or the process itself, reads: config_sections.py)
are the fields of `Settings`, below. A role's own section lives with the role (`RouterSettings` in
roles/router.py, ...: a class with `SECTION`), and the registry hands the loader the sections
of the roles a process runs (`roles.load_settings`): `settings.section(RouterSettings)`.
Values (parsing, rules, secrets) are config_values.py's.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar

from chat4all_workers.config_sections import (
    CHANNELS,
    DLQ_REPLAY_GROUP,
    NON_EMPTY,
    RESTART_TYPES,
    TOPIC,
    ZERO_OK,
    AccountsSettings,
    BreakerSettings,
    DeliverySettings,
    FallbackSettings,
    FilesSettings,
    InstagramSettings,
    KafkaSettings,
    ObservabilitySettings,
    PostgresSettings,
    RedisSettings,
    RoleSettings,
    S3Settings,
    SupervisorSettings,
    TopicSettings,
    WhatsAppSettings,
    env,
)
from chat4all_workers.config_values import (
    json_value,
    parse_text,
    parse_toml,
    printable,
    shown_key,
    validate,
)
from chat4all_workers.errors import ConfigError
from chat4all_workers.frozen import frozen

__all__ = [
    "CHANNELS",
    "DLQ_REPLAY_GROUP",
    "NON_EMPTY",
    "RESTART_TYPES",
    "TOPIC",
    "ZERO_OK",
    "AccountsSettings",
    "BreakerSettings",
    "DeliverySettings",
    "FallbackSettings",
    "FilesSettings",
    "InstagramSettings",
    "KafkaSettings",
    "ObservabilitySettings",
    "PostgresSettings",
    "RedisSettings",
    "RoleSettings",
    "S3Settings",
    "Section",
    "Settings",
    "SupervisorSettings",
    "TopicSettings",
    "WhatsAppSettings",
    "env",
]


# Keys that moved to a shared section (several roles read them): named in the error, not dropped.
MOVED_KEYS = {
    "router.dedup_ttl_s": "delivery.dedup_ttl_s",
    "webhooks.provider_index_ttl_s": "delivery.provider_index_ttl_s",
    "webhooks.whatsapp_app_secret": "whatsapp.app_secret",
    "webhooks.instagram_app_secret": "instagram.app_secret",
    "webhooks.whatsapp_verify_token": "whatsapp.verify_token",
    "webhooks.instagram_verify_token": "instagram.verify_token",
    "merge.download_url_expiry_s": "files.download_url_expiry_s",
    "gc.merging_stuck_minutes": "files.merging_stuck_minutes",
}

S = typing.TypeVar("S")


class Section(typing.Protocol):
    """A role's own settings section: a frozen dataclass naming its TOML table."""

    SECTION: ClassVar[str]


@frozen(kw_only=True)
class Settings:
    """Every setting of the process: one frozen section per shared concern, and the sections of
    the roles it runs (`section`)."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    roles: RoleSettings = field(default_factory=RoleSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    files: FilesSettings = field(default_factory=FilesSettings)
    whatsapp: WhatsAppSettings = field(default_factory=WhatsAppSettings)
    instagram: InstagramSettings = field(default_factory=InstagramSettings)
    accounts: AccountsSettings = field(default_factory=AccountsSettings)
    # Roles' own sections, by name (`section`): those of the roles this process was loaded for.
    sections: Mapping[str, Any] = field(default_factory=dict)
    # "section.key" -> where its value came from ("default", "supervisor.toml", "env X", "--flag").
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    DEFAULT_PATH: ClassVar[str] = "supervisor.toml"

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str],
        toml: Mapping[str, Any] | Path | None = None,
        *,
        overrides: Mapping[str, tuple[str, str]] | None = None,
        sections: typing.Iterable[type[Any]] = (),
        known: typing.Iterable[str] = (),
    ) -> Settings:
        """Build settings from a TOML document (or file), the environment and CLI overrides.

        `overrides` maps "section.key" to (raw value, source label), e.g. {"roles.enabled":
        ("router", "--roles")}. `sections` are the role sections to load (classes with
        `SECTION`); `known` names more tables the file may hold without their being read (the
        sections of roles this process does not run). Raises ConfigError naming the key and
        source of the first bad value.
        """
        doc, file_label = _read_toml(toml)
        overrides = overrides or {}
        _refuse_moved(doc, environ, file_label)
        loaded: dict[str, Any] = {}
        sources: dict[str, str] = {}
        hints = typing.get_type_hints(cls)
        shared = {f.name: hints[f.name] for f in _shared_fields(cls)}
        own = {section.SECTION: section for section in sections}
        known_sections = {*shared, *own, *known}
        for name in doc:
            if name not in known_sections:
                raise ConfigError(
                    name, file_label, f"unknown section; known: {sorted(known_sections)}"
                )
        for name, section_cls in {**shared, **own}.items():
            table = doc.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(name, file_label, "must be a table")
            loaded[name] = _load_section(
                name, section_cls, table, environ, overrides, file_label, sources
            )
        roles_own = {name: loaded.pop(name) for name in own}
        return cls(**loaded, sections=roles_own, sources=sources)

    def section(self, cls: type[S]) -> S:
        """A role's own section (`cls.SECTION`), as loaded for this process."""
        name = getattr(cls, "SECTION")  # noqa: B009 - a Section protocol class
        value = self.sections.get(name)
        if not isinstance(value, cls):
            raise LookupError(f"settings section [{name}] was not loaded for this process")
        return value

    def replace(self, **changes: Mapping[str, Any]) -> Settings:
        """A copy with some fields changed: `s.replace(kafka={"max_in_flight": 5})`, a role's
        own section too: `s.replace(router={"max_attempts": 1})`."""
        shared_names = {f.name for f in _shared_fields(type(self))}
        shared = {
            name: dataclasses.replace(getattr(self, name), **values)
            for name, values in changes.items()
            if name in shared_names
        }
        own = dict(self.sections)
        for name, values in changes.items():
            if name not in shared_names:
                own[name] = dataclasses.replace(self._table(name), **values)
        return dataclasses.replace(self, **shared, sections=own)

    def _table(self, name: str) -> Any:
        """A section by its name, shared or own; LookupError for one not loaded."""
        if name in self.sections:
            return self.sections[name]
        if name in {f.name for f in _shared_fields(type(self))}:
            return getattr(self, name)
        raise LookupError(f"settings section [{name}] was not loaded for this process")

    def env_of(self, key: str) -> str:
        """The environment name that sets `key` ("whatsapp.app_secret" -> WHATSAPP_APP_SECRET)."""
        name, _, field_name = key.partition(".")
        section = self._table(name)
        (found,) = [f for f in dataclasses.fields(section) if f.name == field_name]
        return env_name(name, found)

    def describe(self) -> list[SettingRow]:
        """Every setting with its printable value, source and env name; secrets stay hidden."""
        named = [(f.name, getattr(self, f.name)) for f in _shared_fields(type(self))]
        rows = []
        for name, value in [*named, *self.sections.items()]:
            for f in dataclasses.fields(value):
                key = f"{name}.{f.name}"
                rows.append(
                    SettingRow(
                        key=key,
                        value=printable(getattr(value, f.name)),
                        source=self.sources.get(key, "default"),
                        env=env_name(name, f),
                        data=json_value(getattr(value, f.name)),
                    )
                )
        return rows


def _shared_fields(cls: type[Settings]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.name not in ("sections", "sources")]


def _refuse_moved(doc: Mapping[str, Any], environ: Mapping[str, str], file_label: str) -> None:
    """A key that moved is an error naming where it went, not a value silently ignored."""
    for old, new in MOVED_KEYS.items():
        section, _, name = old.partition(".")
        table = doc.get(section)
        if isinstance(table, dict) and name in table:
            raise ConfigError(old, file_label, f"moved to {new}")
        old_env = f"CHAT4ALL_{section}_{name}".upper()
        new_section, _, new_name = new.partition(".")
        if old_env in environ and old_env != f"CHAT4ALL_{new_section}_{new_name}".upper():
            raise ConfigError(old, f"env {old_env}", f"moved to {new}")


class SettingRow(typing.NamedTuple):
    key: str
    value: str  # printable; a secret masked (`Secret.masked`)
    source: str
    env: str
    data: Any = None  # the value as JSON (lists, tables, numbers), a secret masked


def env_name(section: str, f: dataclasses.Field[Any]) -> str:
    legacy = f.metadata.get("env")
    if legacy:
        return str(legacy).replace("{SECTION}", section.upper())
    return f"CHAT4ALL_{section}_{f.name}".upper()


def _read_toml(toml: Mapping[str, Any] | Path | None) -> tuple[Mapping[str, Any], str]:
    if toml is None:
        return {}, "supervisor.toml"
    if isinstance(toml, Path):
        try:
            with toml.open("rb") as fh:
                return tomllib.load(fh), str(toml)
        except FileNotFoundError:
            raise ConfigError("--config", str(toml), "file not found") from None
        except OSError as exc:
            raise ConfigError("--config", str(toml), f"cannot read it: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", str(toml), "not valid TOML: not UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", str(toml), f"not valid TOML: {exc}") from None
    return toml, "supervisor.toml"


def _load_section(
    section: str,
    section_cls: type[Any],
    table: Mapping[str, Any],
    environ: Mapping[str, str],
    overrides: Mapping[str, tuple[str, str]],
    file_label: str,
    sources: dict[str, str],
) -> Any:
    hints = typing.get_type_hints(section_cls)
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(
                f"{section}.{shown_key(key)}", file_label, f"unknown key; known: {sorted(fields)}"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        env = env_name(section, f)
        if key in overrides:
            raw, source = overrides[key]
            value = parse_text(key, source, raw, hints[name])
        elif env in environ:
            source = f"env {env}"
            value = parse_text(key, source, environ[env], hints[name])
        elif name in table:
            source = file_label
            value = parse_toml(key, source, table[name], hints[name])
        else:
            continue
        validate(key, source, f.metadata, value)
        values[name] = value
        sources[key] = source
    loaded = section_cls(**values)
    for name, problem in getattr(loaded, "problems", list)():
        key = f"{section}.{name}"
        raise ConfigError(key, sources.get(key, "default"), problem)
    return loaded
