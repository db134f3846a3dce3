"""The one config loader (config.py): precedence, shared and role sections, validation that names
key and source, moved keys, hidden secrets, and what settings say about themselves. How one value
is parsed and checked is tests/test_config_values.py's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from chat4all_workers.config import MOVED_KEYS, RESTART_TYPES, Settings
from chat4all_workers.config_values import Secret
from chat4all_workers.errors import ConfigError
from chat4all_workers.role import Restart
from chat4all_workers.roles import load_settings
from chat4all_workers.roles.outbox import OutboxSettings
from chat4all_workers.roles.router import RouterSettings

REPO = Path(__file__).resolve().parent.parent


def test_settings_precedence_is_flag_then_env_then_file_then_default() -> None:
    doc = {"roles": {"enabled": ["gc"]}, "outbox": {"batch_size": 7, "max_retries": 9}}
    env = {"ROLES": "outbox", "OUTBOX_BATCH_SIZE": "8"}

    settings = load_settings(env, doc, overrides={"roles.enabled": ("router", "--roles")})

    assert settings.roles.enabled == ("router",)
    assert settings.section(OutboxSettings).batch_size == 8
    assert settings.section(OutboxSettings).max_retries == 9
    assert settings.section(OutboxSettings).poll_interval_ms == 500
    assert settings.sources["roles.enabled"] == "--roles"
    assert settings.sources["outbox.batch_size"] == "env OUTBOX_BATCH_SIZE"
    assert settings.sources["outbox.max_retries"] == "supervisor.toml"


def test_settings_every_key_has_a_generic_env_name() -> None:
    settings = load_settings(
        {"CHAT4ALL_KAFKA_MAX_IN_FLIGHT": "42", "CHAT4ALL_REDIS_KEY_PREFIX": "t:"}
    )

    assert settings.kafka.max_in_flight == 42
    assert settings.redis.key_prefix == "t:"


def test_settings_parse_env_lists_tables_and_booleans() -> None:
    settings = load_settings(
        {
            "ROLES": "router, outbox",
            "MINIO_SECURE": "yes",
            "CHAT4ALL_OUTBOX_ROUTES": "a.b=t1,c.*=t2",
        }
    )

    assert settings.roles.enabled == ("router", "outbox")
    assert settings.s3.secure is True
    assert settings.section(OutboxSettings).routes == {"a.b": "t1", "c.*": "t2"}


@pytest.mark.parametrize(
    ("env", "doc", "message"),
    [
        ({"OUTBOX_BATCH_SIZE": "lots"}, {}, "outbox.batch_size (env OUTBOX_BATCH_SIZE): expected"),
        ({"MINIO_SECURE": "maybe"}, {}, "s3.secure (env MINIO_SECURE): expected true or false"),
        (
            {},
            {"kafka": {"max_in_flight": "many"}},
            "kafka.max_in_flight (supervisor.toml): expected integer, got string 'many'",
        ),
        ({}, {"kafka": {"no_such_key": 1}}, "kafka.no_such_key (supervisor.toml): unknown key"),
        ({}, {"nonsense": {}}, "nonsense (supervisor.toml): unknown section"),
        ({"KAFKA_AUTO_OFFSET_RESET": "mid"}, {}, "must be one of earliest, latest, got 'mid'"),
        ({"GC_BATCH_SIZE": "-1"}, {}, "gc.batch_size (env GC_BATCH_SIZE): must be greater than 0"),
        ({"OUTBOX_BATCH_SIZE": "0"}, {}, "outbox.batch_size (env OUTBOX_BATCH_SIZE): must be"),
        ({"OUTBOX_MAX_RETRIES": "-1"}, {}, "outbox.max_retries (env OUTBOX_MAX_RETRIES): must"),
        ({"CHAT4ALL_ROUTER_RETRY_CAP_S": "nan"}, {}, "router.retry_cap_s (env CHAT4ALL_ROUTER_RE"),
        ({"METRICS_PORT": "70000"}, {}, "observability.metrics_port (env METRICS_PORT): must"),
        ({"CHAT4ALL_MOCKS_ERROR_RATE": "1.5"}, {}, "mocks.error_rate (env CHAT4ALL_MOCKS_ERROR_R"),
        (
            {"CHAT4ALL_GC_SCHEDULE": "99 99 * * *"},
            {},
            "gc.schedule (env CHAT4ALL_GC_SCHEDULE): cron minute field '99' is outside 0-59",
        ),
        ({}, {"gc": {"schedule": "0 0 30 2 *"}}, "gc.schedule (supervisor.toml): cron never fires"),
        (
            {},
            {"roles": {"restart": {"router": "sometimes"}}},
            "roles.restart.router (supervisor.toml): must be one of permanent, transient, tempor",
        ),
        ({"CHAT4ALL_TOPICS_DLQ": "a b"}, {}, "topics.dlq (env CHAT4ALL_TOPICS_DLQ): not a Kafka"),
        ({"CHAT4ALL_KAFKA_PARTITIONS": "x/y=3"}, {}, "kafka.partitions.x/y (env CHAT4ALL_KAFKA_PA"),
        ({"MINIO_BUCKET": "Bad_Bucket"}, {}, "s3.bucket (env MINIO_BUCKET): not an S3 bucket name"),
        ({"MINIO_ENDPOINT": "http://s3:9000"}, {}, "s3.endpoint (env MINIO_ENDPOINT): expected h"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "k:9092,,"}, {}, "kafka.bootstrap_servers (env KAFKA_BOOTST"),
        ({"WHATSAPP_API_BASE_URL": "graph.facebook.com"}, {}, "whatsapp.base_url (env WHATSAPP_AP"),
        ({"CHAT4ALL_WHATSAPP_API_VERSION": "21"}, {}, "whatsapp.api_version (env CHAT4ALL_WHATSA"),
        (
            {"CHAT4ALL_POSTGRES_POOL_MIN_SIZE": "20"},
            {},
            "postgres.pool_min_size (env CHAT4ALL_POSTGRES_POOL_MIN_SIZE): must not exceed",
        ),
    ],
)
def test_settings_reject_bad_values_naming_key_and_source(
    env: dict[str, str], doc: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env, doc)

    assert message in str(error.value)
    assert "\n" not in str(error.value)


# A password nobody would write by accident; it must never be in an error message.
PASSWORD = "pw-0xDEADBEEF"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_URL": f"postgresql://u:{PASSWORD}@db:notaport/x"},
            "postgres.url (env DATABASE_URL): the port must be a number from 1 to 65535",
        ),
        (
            {"DATABASE_URL": f"mysql://u:{PASSWORD}@db/x"},
            "postgres.url (env DATABASE_URL): must start with postgresql:// or postgres://",
        ),
        (
            {"DATABASE_URL": f"postgresql://u:{PASSWORD}@db"},
            "postgres.url (env DATABASE_URL): no database name",
        ),
        (
            {"DATABASE_URL": f"postgresql://u:{PASSWORD}/x@db/x"},  # an unencoded / in it
            "postgres.url (env DATABASE_URL): has an unencoded @, /, ? or #",
        ),
        (
            {"DATABASE_URL": f"postgresql://u:{PASSWORD}@db/x?sslmode=sometimes"},
            "postgres.url (env DATABASE_URL): sslmode must be one of",
        ),
        (
            {"REDIS_URL": f"http://:{PASSWORD}@cache:6379"},
            "redis.url (env REDIS_URL): must start with redis:// or rediss:// or unix://",
        ),
        (
            {"REDIS_URL": f"redis://:{PASSWORD}@cache:6379/notadb"},
            "redis.url (env REDIS_URL): the database number must be a non-negative integer",
        ),
        (
            {"REDIS_URL": f"redis://:{PASSWORD}@cache:99999/0"},
            "redis.url (env REDIS_URL): the port must be a number from 1 to 65535",
        ),
    ],
)
def test_settings_reject_a_bad_dsn_without_quoting_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(env)

    assert message in str(error.value)
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("postgres.url", [f"postgresql://u:{PASSWORD}@db/x"]),
        ("redis.url", {"url": PASSWORD}),
        ("s3.secret_key", [PASSWORD]),
        ("whatsapp.access_token", 42),
        ("instagram.access_token", [PASSWORD, PASSWORD]),
    ],
)
def test_settings_name_a_wrong_typed_secret_by_its_type_only(key: str, value: object) -> None:
    section, name = key.split(".")

    with pytest.raises(ConfigError) as error:
        load_settings({}, {section: {name: value}})

    assert str(error.value).startswith(f"{key} (supervisor.toml): expected string, got ")
    assert PASSWORD not in str(error.value)
    assert "42" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all",
        "postgres://u@db1:5432,db2:5433/app?sslmode=verify-full",
        "postgresql:///app?host=/run/postgresql",
    ],
)
def test_settings_accept_the_dsns_asyncpg_accepts(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).postgres.url.get() == url


def test_settings_restart_types_are_the_supervisors() -> None:
    assert set(RESTART_TYPES) == {r.value for r in Restart}


def test_secret_never_shows_its_value() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://u:hunter2@db/x"})

    assert settings.postgres.url.get() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.postgres.url)
    assert all("hunter2" not in row.value for row in settings.describe())
    assert all("hunter2" not in str(row.data) for row in settings.describe())
    assert Secret("a") == Secret("a")


def test_checked_in_supervisor_toml_loads_and_documents_every_key() -> None:
    path = REPO / "supervisor.toml"
    with path.open("rb") as fh:
        doc = tomllib.load(fh)

    settings = load_settings({}, path)

    documented = {f"{section}.{key}" for section, table in doc.items() for key in table}
    every_key = {row.key for row in settings.describe()}
    assert every_key - documented == set()
    assert settings.whatsapp.base_url.startswith("http://127.0.0.1:")


def test_consumer_group_of_a_role_is_derived_unless_named() -> None:
    from_env = load_settings(
        {"KAFKA_CONSUMER_GROUP": "c4a", "CHAT4ALL_KAFKA_GROUPS": "router=message_router_group"}
    )
    from_file = load_settings({}, {"kafka": {"groups": {"merge": "old_merge_group"}}})

    assert from_env.kafka.group_for("router") == "message_router_group"
    assert from_env.kafka.group_for("status_updater") == "c4a-status_updater"
    assert from_file.kafka.group_for("merge") == "old_merge_group"
    assert from_file.kafka.group_for("dlq-replay") == "chat4all-workers-dlq-replay"


# -- shared sections and a role's own --------------------------------------------------------------


def test_settings_load_reads_the_role_sections_it_is_given() -> None:
    settings = Settings.load(
        {"OUTBOX_BATCH_SIZE": "8"},
        {"kafka": {"max_in_flight": 5}, "outbox": {"max_retries": 9}},
        sections=[OutboxSettings],
    )

    assert settings.kafka.max_in_flight == 5
    assert settings.section(OutboxSettings) == OutboxSettings(batch_size=8, max_retries=9)
    assert list(settings.sections) == ["outbox"]


def test_settings_section_not_loaded_for_this_process_is_a_lookup_error() -> None:
    settings = Settings.load({})

    with pytest.raises(LookupError, match=r"settings section \[outbox\] was not loaded"):
        settings.section(OutboxSettings)


def test_settings_accept_the_tables_of_roles_they_do_not_run_unread() -> None:
    settings = Settings.load({}, {"outbox": {"no_such_key": 1}}, known=["outbox"])

    assert settings.sections == {}


def test_settings_refuse_an_unknown_section_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load({}, {"outbx": {}}, sections=[OutboxSettings])

    assert str(error.value).startswith("outbx (supervisor.toml): unknown section; known: [")
    assert "'outbox'" in str(error.value)
    assert "'kafka'" in str(error.value)


def test_settings_refuse_a_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^kafka \(supervisor.toml\): must be a table$"):
        Settings.load({}, {"kafka": 5})


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_KEYS.items()))
def test_settings_refuse_a_moved_key_in_the_file_naming_its_new_key(old: str, new: str) -> None:
    section, name = old.split(".")

    with pytest.raises(ConfigError) as error:
        load_settings({}, {section: {name: 1}})

    assert str(error.value) == f"{old} (supervisor.toml): moved to {new}"


def test_settings_refuse_a_moved_key_in_the_environment_naming_its_new_key() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({"CHAT4ALL_WEBHOOKS_WHATSAPP_APP_SECRET": "s"})

    assert str(error.value) == (
        "webhooks.whatsapp_app_secret (env CHAT4ALL_WEBHOOKS_WHATSAPP_APP_SECRET): "
        "moved to whatsapp.app_secret"
    )


def test_settings_refuse_a_config_file_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match=r"^--config \(.*nope.toml\): file not found$"):
        Settings.load({}, missing)


def test_settings_refuse_a_file_that_is_not_toml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")

    with pytest.raises(ConfigError, match=r"broken.toml\): not valid TOML: "):
        Settings.load({}, broken)


# -- copies and self-description ----------------------------------------------------------------


def test_settings_replace_changes_shared_and_role_sections_in_a_copy() -> None:
    settings = load_settings({}, roles=["router"])

    changed = settings.replace(kafka={"max_in_flight": 5}, router={"max_attempts": 1})

    assert changed.kafka.max_in_flight == 5
    assert changed.section(RouterSettings).max_attempts == 1
    assert changed.kafka.linger_ms == settings.kafka.linger_ms
    assert settings.kafka.max_in_flight == 1000  # the original is unchanged
    assert settings.section(RouterSettings).max_attempts == 3


def test_settings_describe_every_setting_with_its_value_source_and_env_name() -> None:
    settings = load_settings({"OUTBOX_BATCH_SIZE": "8", "ROLES": "router,outbox"}, roles=["outbox"])

    rows = {row.key: row for row in settings.describe()}

    batch = rows["outbox.batch_size"]
    assert (batch.value, batch.source, batch.env, batch.data) == (
        "8",
        "env OUTBOX_BATCH_SIZE",
        "OUTBOX_BATCH_SIZE",
        8,
    )
    assert (rows["roles.enabled"].value, rows["roles.enabled"].data) == (
        "router,outbox",
        ["router", "outbox"],
    )
    in_flight = rows["kafka.max_in_flight"]
    assert (in_flight.value, in_flight.source, in_flight.env, in_flight.data) == (
        "1000",
        "default",
        "CHAT4ALL_KAFKA_MAX_IN_FLIGHT",
        1000,
    )
    assert not any(key.startswith("router.") for key in rows)  # not loaded for this process


@pytest.mark.parametrize(
    ("key", "env"),
    [
        ("whatsapp.app_secret", "WHATSAPP_APP_SECRET"),
        ("kafka.max_in_flight", "CHAT4ALL_KAFKA_MAX_IN_FLIGHT"),
        ("router.max_attempts", "CHAT4ALL_ROUTER_MAX_ATTEMPTS"),
        ("outbox.batch_size", "OUTBOX_BATCH_SIZE"),
    ],
)
def test_settings_env_of_names_the_variable_that_sets_a_key(key: str, env: str) -> None:
    settings = load_settings({}, roles=["router", "outbox"])

    assert settings.env_of(key) == env


def test_channel_sections_name_the_environments_account_by_provider_id() -> None:
    settings = load_settings(
        {"WHATSAPP_PHONE_NUMBER_ID": "1001", "INSTAGRAM_USER_ID": "17841400000000000"}
    )

    assert settings.whatsapp.provider_id == "1001"
    assert settings.instagram.provider_id == "17841400000000000"
