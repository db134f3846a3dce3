"""The one config loader: precedence, validation that names key and source, hidden secrets."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from chat4all_workers.config import Secret, Settings
from chat4all_workers.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_settings_precedence_is_flag_then_env_then_file_then_default() -> None:
    doc = {"roles": {"enabled": ["gc"]}, "outbox": {"batch_size": 7, "max_retries": 9}}
    env = {"ROLES": "outbox", "OUTBOX_BATCH_SIZE": "8"}

    settings = Settings.load(env, doc, overrides={"roles.enabled": ("router", "--roles")})

    assert settings.roles.enabled == ("router",)
    assert settings.outbox.batch_size == 8
    assert settings.outbox.max_retries == 9
    assert settings.outbox.poll_interval_ms == 500
    assert settings.sources["roles.enabled"] == "--roles"
    assert settings.sources["outbox.batch_size"] == "env OUTBOX_BATCH_SIZE"
    assert settings.sources["outbox.max_retries"] == "supervisor.toml"


def test_settings_every_key_has_a_generic_env_name() -> None:
    settings = Settings.load(
        {"CHAT4ALL_KAFKA_MAX_IN_FLIGHT": "42", "CHAT4ALL_REDIS_KEY_PREFIX": "t:"}
    )

    assert settings.kafka.max_in_flight == 42
    assert settings.redis.key_prefix == "t:"


def test_settings_parse_env_lists_tables_and_booleans() -> None:
    settings = Settings.load(
        {
            "ROLES": "router, outbox",
            "MINIO_SECURE": "yes",
            "CHAT4ALL_OUTBOX_ROUTES": "a.b=t1,c.*=t2",
        }
    )

    assert settings.roles.enabled == ("router", "outbox")
    assert settings.s3.secure is True
    assert settings.outbox.routes == {"a.b": "t1", "c.*": "t2"}


@pytest.mark.parametrize(
    ("env", "doc", "message"),
    [
        ({"OUTBOX_BATCH_SIZE": "lots"}, {}, "outbox.batch_size (env OUTBOX_BATCH_SIZE)"),
        ({"MINIO_SECURE": "maybe"}, {}, "s3.secure (env MINIO_SECURE)"),
        (
            {},
            {"kafka": {"max_in_flight": "many"}},
            "kafka.max_in_flight (supervisor.toml): expected int",
        ),
        ({}, {"kafka": {"no_such_key": 1}}, "kafka.no_such_key (supervisor.toml): unknown key"),
        ({}, {"nonsense": {}}, "nonsense (supervisor.toml): unknown section"),
        ({"KAFKA_AUTO_OFFSET_RESET": "middle"}, {}, "must be one of ['earliest', 'latest']"),
        ({"GC_BATCH_SIZE": "-1"}, {}, "gc.batch_size (env GC_BATCH_SIZE): must not be negative"),
    ],
)
def test_settings_reject_bad_values_naming_key_and_source(
    env: dict[str, str], doc: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(env, doc)

    assert message in str(error.value)


def test_secret_never_shows_its_value() -> None:
    settings = Settings.load({"DATABASE_URL": "postgresql://u:hunter2@db/x"})

    assert settings.postgres.url.get() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.postgres.url)
    assert all("hunter2" not in row.value for row in settings.describe())
    assert Secret("a") == Secret("a")


def test_checked_in_supervisor_toml_loads_and_documents_every_key() -> None:
    path = REPO / "supervisor.toml"
    with path.open("rb") as fh:
        doc = tomllib.load(fh)

    settings = Settings.load({}, path)

    documented = {f"{section}.{key}" for section, table in doc.items() for key in table}
    every_key = {row.key for row in settings.describe()}
    assert every_key - documented == set()
    assert settings.whatsapp.base_url.startswith("http://127.0.0.1:")


def test_consumer_group_of_a_role_is_derived_unless_named() -> None:
    from_env = Settings.load(
        {"KAFKA_CONSUMER_GROUP": "c4a", "CHAT4ALL_KAFKA_GROUPS": "router=message_router_group"}
    )
    from_file = Settings.load({}, {"kafka": {"groups": {"merge": "old_merge_group"}}})

    assert from_env.kafka.group_for("router") == "message_router_group"
    assert from_env.kafka.group_for("status_updater") == "c4a-status_updater"
    assert from_file.kafka.group_for("merge") == "old_merge_group"
    assert from_file.kafka.group_for("dlq-replay") == "chat4all-workers-dlq-replay"
