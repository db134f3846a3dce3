"""Typed, frozen settings, built once at the edge of the process.

There is exactly one loader, `Settings.load`. A value comes from, in order of precedence: a CLI
flag, the environment, `supervisor.toml`, the field's default. Each field of a section dataclass
is one setting; its TOML key is `section.field`, its environment name is the legacy name from the
platform's documentation when there is one (`metadata={"env": ...}`) and
`CHAT4ALL_<SECTION>_<FIELD>` otherwise, so every key can be overridden in a container without a
file. Everything below `cli.py` receives these values and never reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from chat4all_workers import config_checks
from chat4all_workers.errors import ConfigError


class Secret:
    """A credential; `repr`/`str` hide it, so it cannot leak into logs, `config show` or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def masked(self) -> str:
        """What `config show` prints: a URL without its password (`postgresql://chat4all:***@
        db:5432/chat4all`, so the host stays visible), any other secret as `***`, and an empty
        one as empty."""
        if not self._value:
            return ""
        return config_checks.masked_url(self._value) or "***"


def _env(name: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: the legacy environment name, plus any rule (`check`, `min`, ...)."""
    return {"env": name, **rules}


# Rules of the values below (see `_validate`): numbers must be greater than 0 and at most
# 2**31 - 1 (integers) or 1e9 unless `min`/`max` say otherwise; `choices` lists the allowed
# values (of each entry, for a table); `check` is one of config_checks; `check_key` checks the
# names of a table's entries. Defaults are not checked: `supervisor.toml` repeats every one, and
# a test loads it.
_ZERO_OK = {"min": 0}
_TOPIC = {"check": config_checks.topic_name}
_NON_EMPTY = {"check": config_checks.non_empty}
# OTP restart types; roles/base.py `Restart` has the same three (a test keeps them equal).
RESTART_TYPES = ("permanent", "transient", "temporary")


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    bootstrap_servers: str = field(
        default="127.0.0.1:9092",
        metadata=_env("KAFKA_BOOTSTRAP_SERVERS", check=config_checks.kafka_servers),
    )
    consumer_group: str = field(
        default="chat4all-workers", metadata=_env("KAFKA_CONSUMER_GROUP", **_NON_EMPTY)
    )
    auto_offset_reset: str = field(
        default="earliest",
        metadata={"env": "KAFKA_AUTO_OFFSET_RESET", "choices": ("earliest", "latest")},
    )
    client_id: str = field(default="chat4all-workers", metadata=_NON_EMPTY)
    max_in_flight: int = 1000
    # Records a handler holds while it waits on an outside condition (a paused channel, a
    # recipient's pair limit: kafka/consumer.py `held()`) count against this bound instead of
    # max_in_flight, so they do not starve the rest; past it they count normally again.
    max_held_records: int = 10_000
    fetch_max_records: int = 500
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 30_000
    # How long the group coordinator waits for every member to rejoin a rebalance; a member
    # waits up to half of it for its revoked partitions' running handlers (kafka/consumer.py).
    # Keep it well above session_timeout_ms / 3 (the heartbeat that notices a rebalance).
    rebalance_timeout_ms: int = 30_000
    linger_ms: int = field(default=5, metadata=_ZERO_OK)
    default_partitions: int = 12
    replication_factor: int = field(default=1, metadata={"max": 32767})
    dlq_retention_ms: int = field(default=7 * 24 * 3600 * 1000, metadata={"max": 2**63 - 1})
    partitions: dict[str, int] = field(
        default_factory=dict, metadata={"check_key": config_checks.topic_name}
    )
    # Per-role consumer group, replacing "<consumer_group>-<role>": e.g. {"router":
    # "message_router_group"} continues from the original workers' committed offsets. Keys are
    # role names, or DLQ_REPLAY_GROUP (checked with the registry: roles.check_role_keys).
    groups: dict[str, str] = field(default_factory=dict, metadata=_NON_EMPTY)

    def group_for(self, role: str) -> str:
        """The consumer group of a consuming role (or of a tool like `dlq-replay`). The one
        derivation: the roles, `status` and `dlq replay` all ask here."""
        return self.groups.get(role) or f"{self.consumer_group}-{role}"


# The group name `dlq replay` asks `KafkaSettings.group_for` for (it reads the DLQ topics).
DLQ_REPLAY_GROUP = "dlq-replay"


@dataclass(frozen=True, kw_only=True)
class TopicSettings:
    """Topic names; overridable so that tests and tenants can run side by side."""

    message_processing: str = field(default="message_processing", metadata=_TOPIC)
    message_status_updates: str = field(default="message_status_updates", metadata=_TOPIC)
    dlq: str = field(default="message_processing_dlq", metadata=_TOPIC)
    file_merge_requests: str = field(default="file_merge_requests", metadata=_TOPIC)
    file_upload_completed: str = field(default="file_upload_completed", metadata=_TOPIC)
    message_events: str = field(default="message_events", metadata=_TOPIC)
    file_events: str = field(default="file_events", metadata=_TOPIC)
    conversation_events: str = field(default="conversation_events", metadata=_TOPIC)
    default_events: str = field(default="default_events", metadata=_TOPIC)
    # Messages users send to our WhatsApp number / Instagram account (the webhooks role).
    inbound_messages: str = field(default="inbound_messages", metadata=_TOPIC)


@dataclass(frozen=True, kw_only=True)
class PostgresSettings:
    url: Secret = field(
        default=Secret("postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all"),
        metadata=_env("DATABASE_URL", check=config_checks.postgres_url),
    )
    pool_min_size: int = field(default=1, metadata=_ZERO_OK)
    pool_max_size: int = 10
    command_timeout_s: float = 30.0

    def problems(self) -> list[tuple[str, str]]:
        """Rules across fields: (field, problem) pairs."""
        if self.pool_min_size > self.pool_max_size:
            return [("pool_min_size", f"must not exceed pool_max_size ({self.pool_max_size})")]
        return []


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    url: Secret = field(
        default=Secret("redis://127.0.0.1:6379/0"),
        metadata=_env("REDIS_URL", check=config_checks.redis_url),
    )
    key_prefix: str = ""
    max_connections: int = 50


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint: str = field(
        default="127.0.0.1:9000", metadata=_env("MINIO_ENDPOINT", check=config_checks.host_port)
    )
    access_key: Secret = field(default=Secret("chat4all"), metadata=_env("MINIO_ACCESS_KEY"))
    secret_key: Secret = field(default=Secret("chat4all-secret"), metadata=_env("MINIO_SECRET_KEY"))
    bucket: str = field(
        default="chat4all-files", metadata=_env("MINIO_BUCKET", check=config_checks.bucket_name)
    )
    secure: bool = field(default=False, metadata=_env("MINIO_SECURE"))
    region: str = field(default="us-east-1", metadata=_NON_EMPTY)


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    # Consecutive records (not calls) that Kafka did not acknowledge within ack_timeout_s.
    failure_threshold: int = 5
    cooldown_s: float = 10.0
    # A record unacknowledged this long counts as a failure; the send keeps waiting for
    # Kafka's verdict (kafka/producer.py), so the breaker opens within about this of an outage.
    ack_timeout_s: float = 3.0


@dataclass(frozen=True, kw_only=True)
class SupervisorSettings:
    max_restarts: int = field(default=5, metadata=_ZERO_OK)
    restart_window_s: float = 60.0
    backoff_base_s: float = field(default=0.5, metadata=_ZERO_OK)
    backoff_cap_s: float = 30.0
    reset_after_s: float = 300.0
    shutdown_timeout_s: float = 25.0
    loop_lag_interval_s: float = 0.5
    loop_lag_warn_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class RoleSettings:
    # "all" is every production role of the registry (roles/__init__.py), so the list of roles
    # is written once.
    enabled: tuple[str, ...] = field(default=("all",), metadata=_env("ROLES"))
    restart: dict[str, str] = field(default_factory=dict, metadata={"choices": RESTART_TYPES})


@dataclass(frozen=True, kw_only=True)
class ObservabilitySettings:
    # Loopback unless told otherwise: the ops port serves /metrics and /readyz unauthenticated.
    # Containers bind every interface explicitly (the image, compose and Kubernetes set
    # CHAT4ALL_OBSERVABILITY_METRICS_HOST=0.0.0.0) so probes and Prometheus reach it.
    metrics_host: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    # 0: a port the OS picks (tests)
    metrics_port: int = field(default=8000, metadata=_env("METRICS_PORT", min=0, max=65535))
    log_level: str = field(
        default="INFO", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")}
    )
    service_name: str = field(
        default="chat4all-workers", metadata=_env("OTEL_SERVICE_NAME", **_NON_EMPTY)
    )
    otlp_endpoint: str = field(
        default="",
        metadata=_env("OTEL_EXPORTER_OTLP_ENDPOINT", check=config_checks.http_url_or_empty),
    )
    # A WARNING or ERROR repeated within this long (the same condition: logger and message,
    # numbers and ids aside, per role) is logged once, then again with the count of repeats it
    # stood for; 0 logs every one.
    log_repeat_interval_s: float = field(default=30.0, metadata=_ZERO_OK)
    # A progress line per role this often (processed, rate, dead-lettered, lag, in flight); 0: none.
    progress_interval_s: float = field(default=30.0, metadata=_ZERO_OK)
    # How stderr's log lines are written: "json" (the contract's JSON objects, for machines),
    # "text" (one readable line per event, for a person), "auto" (text when stderr is a
    # terminal, JSON otherwise: pipes, files and containers get JSON, as before).
    log_format: str = field(default="auto", metadata={"choices": ("auto", "text", "json")})


@dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    poll_interval_ms: int = field(default=500, metadata=_env("OUTBOX_POLL_INTERVAL_MS"))
    max_retries: int = field(default=3, metadata=_env("OUTBOX_MAX_RETRIES", min=0))
    batch_size: int = field(default=100, metadata=_env("OUTBOX_BATCH_SIZE"))
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    notify_channel: str = field(default="outbox_events", metadata=_NON_EMPTY)
    routes: dict[str, str] = field(default_factory=dict, metadata=_TOPIC)
    pending_refresh_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class FallbackSettings:
    queue_key: str = field(default="fallback:message_queue", metadata=_NON_EMPTY)
    poll_interval_s: float = field(default=10.0, metadata=_env("FALLBACK_POLL_INTERVAL"))
    batch_size: int = field(default=50, metadata=_env("FALLBACK_BATCH_SIZE"))
    # A backfill worker whose heartbeat is older than this is presumed dead; its taken items
    # go back to the head of the queue.
    heartbeat_ttl_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class GcSettings:
    retention_hours: float = field(default=24.0, metadata=_env("GC_RETENTION_HOURS"))
    batch_size: int = field(default=100, metadata=_env("GC_BATCH_SIZE"))
    schedule: str = field(default="0 2 * * *", metadata={"check": config_checks.cron})
    merging_stuck_minutes: float = 60.0
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class MergeSettings:
    # Merges running at once per process; each streaming merge holds about two parts in memory.
    max_concurrent: int = 4
    # Part size of a streamed (multipart) merge; S3 requires at least 5 MiB for all but the last.
    stream_part_size_bytes: int = field(
        default=8 * 1024 * 1024, metadata={"min": 5 * 1024 * 1024, "max": 5 * 1024**3}
    )
    # How much is read from S3 (and hashed) at a time.
    read_block_bytes: int = 1024 * 1024
    # Lifetime of the presigned download URL in the completion event (SPEC: 24 h); S3 signs
    # for at most 7 days.
    download_url_expiry_s: int = field(default=24 * 3600, metadata={"max": 7 * 24 * 3600})


@dataclass(frozen=True, kw_only=True)
class RouterSettings:
    max_attempts: int = 3
    retry_base_s: float = 0.2
    retry_cap_s: float = 5.0
    dedup_ttl_s: int = 86_400
    all_channels: tuple[str, ...] = ("whatsapp", "instagram")
    # A send whose outcome is unknown (a worker killed mid-send, a request timed out or reset
    # after it was written, a cancel that could not wait for the answer) waits up to this long
    # for the provider's word (a status webhook recorded in its dedup marker by the webhooks
    # role), holding back only its conversation: found, it is SENT and not sent again.
    in_doubt_window_s: float = 60.0
    # ... and when the window closes with the provider silent: "resend" sends it again (counted
    # as an attempt): a provider that acknowledges every message it takes with a webhook within
    # the window does not have one it stayed silent about. "dead_letter" keeps at-most-once
    # whatever the webhooks do: FAILED + DLQ `delivery_unknown`, for an operator to replay.
    on_unknown_outcome: str = field(
        default="resend", metadata={"choices": ("dead_letter", "resend")}
    )
    # A throttled send never spends an attempt; it waits for the pace and tries again until
    # this long after its first throttled answer, then FAILED (dlq.error_type throttle_deadline).
    throttle_deadline_s: float = 3600.0
    # After a throttled answer halves a channel's sending rate, the rate climbs back to the
    # channel's max_rate_per_s over this long (additive increase).
    pacing_recovery_s: float = 30.0
    # A paused channel (an account-class answer) lets one held send through as a probe after
    # this delay, doubling per failed probe up to the cap.
    pause_probe_base_s: float = 1.0
    pause_probe_cap_s: float = 60.0


@dataclass(frozen=True, kw_only=True)
class WhatsAppSettings:
    base_url: str = field(
        default="https://graph.facebook.com",
        metadata=_env("WHATSAPP_API_BASE_URL", check=config_checks.http_url),
    )
    api_version: str = field(default="v21.0", metadata={"check": config_checks.api_version})
    access_token: Secret = field(default=Secret(""), metadata=_env("WHATSAPP_ACCESS_TOKEN"))
    phone_number_id: str = field(default="", metadata=_env("WHATSAPP_PHONE_NUMBER_ID"))
    timeout_s: float = 10.0
    # Sends per second per business number, shared by every router of the deployment through
    # Redis (Meta: 80 by default, 1,000 after an upgrade, 20 for numbers shared with the
    # WhatsApp Business app). 0 = no pacing.
    max_rate_per_s: float = field(default=80.0, metadata=_ZERO_OK)
    # Per (business number, recipient): a burst of pair_burst, then one per pair_interval_s
    # (Meta: about 45, then one per 6 s). 0 = no pair pacing.
    pair_burst: int = field(default=45, metadata=_ZERO_OK)
    pair_interval_s: float = field(default=6.0, metadata=_ZERO_OK)


@dataclass(frozen=True, kw_only=True)
class InstagramSettings:
    base_url: str = field(
        default="https://graph.facebook.com",
        metadata=_env("INSTAGRAM_API_BASE_URL", check=config_checks.http_url),
    )
    api_version: str = field(default="v21.0", metadata={"check": config_checks.api_version})
    access_token: Secret = field(default=Secret(""), metadata=_env("INSTAGRAM_ACCESS_TOKEN"))
    user_id: str = field(default="", metadata=_env("INSTAGRAM_USER_ID"))
    timeout_s: float = 10.0
    # Sends per second per Instagram account, shared through Redis (Meta: 300 calls/s for text;
    # 250 leaves headroom). 0 = no pacing.
    max_rate_per_s: float = field(default=250.0, metadata=_ZERO_OK)
    # Meta documents no pair limit for Instagram: off (0) unless set.
    pair_burst: int = field(default=0, metadata=_ZERO_OK)
    pair_interval_s: float = field(default=0.0, metadata=_ZERO_OK)


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """The `webhooks` role: the HTTP endpoint Meta calls back (statuses, inbound messages)."""

    host: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    port: int = field(default=8200, metadata={"min": 0, "max": 65535})  # 0: any free port
    # The Meta app's secret signs every POST (X-Hub-Signature-256); empty: POSTs are refused.
    whatsapp_app_secret: Secret = field(default=Secret(""), metadata=_env("WHATSAPP_APP_SECRET"))
    instagram_app_secret: Secret = field(default=Secret(""), metadata=_env("INSTAGRAM_APP_SECRET"))
    # Chosen by us and typed into the app dashboard; Meta's verification GET echoes it.
    whatsapp_verify_token: Secret = field(
        default=Secret(""), metadata=_env("WHATSAPP_VERIFY_TOKEN")
    )
    instagram_verify_token: Secret = field(
        default=Secret(""), metadata=_env("INSTAGRAM_VERIFY_TOKEN")
    )
    max_body_bytes: int = 1024 * 1024
    # POSTs in progress at once (bodies in memory); above it, 503 at once and Meta retries.
    max_concurrent_requests: int = 1000
    # A POST whose body takes longer to arrive is answered 408: slow senders cannot hold the slots.
    body_timeout_s: float = 10.0
    # How long a POST waits for Kafka to acknowledge its records before it answers 503 (Meta
    # retries; the records stay with the producer, which still delivers them: a status is
    # idempotent). Below Meta's own time-out for a webhook.
    store_timeout_s: float = 5.0
    # How long `message:provider:instagram:{mid}` maps a provider id back to our message (a
    # read receipt later than this is counted as unknown and ignored).
    provider_index_ttl_s: int = 86_400


@dataclass(frozen=True, kw_only=True)
class MockSettings:
    host: str = field(default="127.0.0.1", metadata=_NON_EMPTY)
    whatsapp_port: int = field(default=8101, metadata={"min": 0, "max": 65535})
    instagram_port: int = field(default=8102, metadata={"min": 0, "max": 65535})
    latency_ms: float = field(default=0.0, metadata=_ZERO_OK)
    error_rate: float = field(default=0.0, metadata={"min": 0, "max": 1})
    # Like a real account: sends per second per account (0 = unlimited), answered above it as
    # Meta does, HTTP `throttle_status` with code 130429 (WhatsApp) or 613 (Instagram) in the body.
    whatsapp_rate_per_s: float = field(default=80.0, metadata=_ZERO_OK)
    instagram_rate_per_s: float = field(default=300.0, metadata=_ZERO_OK)
    throttle_status: int = field(default=400, metadata={"choices": (400, 429)})
    # WhatsApp's pair limit per (account, recipient), code 131056 (0 = off).
    pair_burst: int = field(default=45, metadata=_ZERO_OK)
    pair_interval_s: float = 6.0
    # An expired token answers every send with HTTP 401 and code 190; also switchable at run
    # time with POST /__mock__/token {"expired": true|false}.
    token_expired: bool = False
    # Like Meta, the mocks call back with signed status webhooks (signed with the webhooks
    # section's app secrets: the mock plays Meta for this app; no secret, no webhooks): WhatsApp
    # `sent` at once, `delivered` and `read` after these delays; Instagram an echo, then a read
    # receipt after read_after_ms. Retried with backoff until answered 200; flushed on shutdown.
    delivered_after_ms: float = field(default=200.0, metadata=_ZERO_OK)
    read_after_ms: float = field(default=500.0, metadata=_ZERO_OK)
    whatsapp_webhook_url: str = "http://127.0.0.1:8200/webhooks/whatsapp"
    instagram_webhook_url: str = "http://127.0.0.1:8200/webhooks/instagram"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting of the process, one frozen section per concern."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    roles: RoleSettings = field(default_factory=RoleSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    whatsapp: WhatsAppSettings = field(default_factory=WhatsAppSettings)
    instagram: InstagramSettings = field(default_factory=InstagramSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    mocks: MockSettings = field(default_factory=MockSettings)
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
    ) -> Settings:
        """Build settings from a TOML document (or file), the environment and CLI overrides.

        `overrides` maps "section.key" to (raw value, source label), e.g. {"roles.enabled":
        ("router", "--roles")}. Raises ConfigError naming the key and source of the first bad value.
        """
        doc, file_label = _read_toml(toml)
        overrides = overrides or {}
        sections: dict[str, Any] = {}
        sources: dict[str, str] = {}
        hints = typing.get_type_hints(cls)
        known_sections = {f.name for f in dataclasses.fields(cls) if f.name != "sources"}
        for name in doc:
            if name not in known_sections:
                raise ConfigError(
                    name, file_label, f"unknown section; known: {sorted(known_sections)}"
                )
        for section in dataclasses.fields(cls):
            if section.name == "sources":
                continue
            section_cls = hints[section.name]
            table = doc.get(section.name, {})
            if not isinstance(table, dict):
                raise ConfigError(section.name, file_label, "must be a table")
            sections[section.name] = _load_section(
                section.name, section_cls, table, environ, overrides, file_label, sources
            )
        return cls(**sections, sources=sources)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, config_path: str | None = None
    ) -> Settings:
        """Settings from `CHAT4ALL_CONFIG` (or `config_path`, or ./supervisor.toml if present)."""
        path = config_path or environ.get("CHAT4ALL_CONFIG")
        if path is None:
            default = Path(cls.DEFAULT_PATH)
            return cls.load(environ, default if default.exists() else None)
        return cls.load(environ, Path(path))

    def replace(self, **changes: Mapping[str, Any]) -> Settings:
        """A copy with some fields changed: `s.replace(kafka={"max_in_flight": 5})`."""
        new = {
            name: dataclasses.replace(getattr(self, name), **values)
            for name, values in changes.items()
        }
        return dataclasses.replace(self, **new)

    def describe(self) -> list[SettingRow]:
        """Every setting with its printable value, source and env name; secrets stay hidden."""
        rows = []
        for section in dataclasses.fields(self):
            if section.name == "sources":
                continue
            value = getattr(self, section.name)
            for f in dataclasses.fields(value):
                key = f"{section.name}.{f.name}"
                rows.append(
                    SettingRow(
                        key=key,
                        value=_printable(getattr(value, f.name)),
                        source=self.sources.get(key, "default"),
                        env=env_name(section.name, f),
                        data=_json_value(getattr(value, f.name)),
                    )
                )
        return rows


class SettingRow(typing.NamedTuple):
    key: str
    value: str  # printable; a secret masked (`Secret.masked`)
    source: str
    env: str
    data: Any = None  # the value as JSON (lists, tables, numbers), a secret masked


def env_name(section: str, f: dataclasses.Field[Any]) -> str:
    legacy = f.metadata.get("env")
    return str(legacy) if legacy else f"CHAT4ALL_{section}_{f.name}".upper()


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
                f"{section}.{_shown_key(key)}", file_label, f"unknown key; known: {sorted(fields)}"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        env = env_name(section, f)
        if key in overrides:
            raw, source = overrides[key]
            value = _parse_text(key, source, raw, hints[name])
        elif env in environ:
            source = f"env {env}"
            value = _parse_text(key, source, environ[env], hints[name])
        elif name in table:
            source = file_label
            value = _parse_toml(key, source, table[name], hints[name])
        else:
            continue
        _validate(key, source, f.metadata, value)
        values[name] = value
        sources[key] = source
    loaded = section_cls(**values)
    for name, problem in getattr(loaded, "problems", list)():
        key = f"{section}.{name}"
        raise ConfigError(key, sources.get(key, "default"), problem)
    return loaded


def _validate(key: str, source: str, rules: Mapping[str, Any], value: Any) -> None:
    """The field's rules (`metadata`) hold for `value`, or ConfigError names the key (a table
    entry as `key.name`) and never quotes a secret."""
    if isinstance(value, dict):
        check_key = rules.get("check_key")
        for name, item in value.items():
            if check_key is not None and (problem := check_key(name)):
                raise ConfigError(f"{key}.{_shown_key(name)}", source, f"the name is {problem}")
            _validate(f"{key}.{_shown_key(name)}", source, rules, item)
        return
    problem = _problem(rules, value)
    if problem:
        raise ConfigError(key, source, problem)


def _problem(rules: Mapping[str, Any], value: Any) -> str | None:
    choices = rules.get("choices")
    if choices and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {_shown(value)}"
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _out_of_bounds(rules, value)
    check = rules.get("check")
    if check is None:
        return None
    if isinstance(value, Secret):
        problem: str | None = check(value.get())  # the URL checks never quote what they read
        return problem
    if isinstance(value, str):
        problem = check(value)
        return f"{problem}: {_shown(value)}" if problem else None
    return None


def _out_of_bounds(rules: Mapping[str, Any], value: float) -> str | None:
    """Numbers are positive unless the field says otherwise (`min`, `max`): a zero or negative
    size, count, timeout or interval is nonsense almost everywhere, so the few settings where 0
    means something (a port chosen by the OS, no delay) say so."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low = rules.get("min")
    high = rules.get("max", _INT_MAX if isinstance(value, int) else _FLOAT_MAX)
    if low is None and value <= 0:
        return f"must be greater than 0, got {value}"
    if low is not None and value < low:
        return f"must be at least {low}, got {value}"
    if value > high:
        return f"must be at most {high}, got {value}"
    return None


# Integers end up in int32 protocol fields (Kafka timeouts, counts) unless a field says otherwise.
_INT_MAX = 2**31 - 1
_FLOAT_MAX = 1e9
_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """A value quoted for an error message: on one line, and cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} chars)"


def _shown_key(key: Any) -> str:
    text = str(key)
    printable = text.isprintable() and len(text) <= _SHOWN_CHARS and "." not in text
    return text if printable else _shown(text)


def _parse_text(key: str, source: str, raw: str, kind: Any) -> Any:
    """Parse an environment or CLI string into the field's type."""
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true or false, got {_shown(raw)}")
        if kind is int:
            return _int(raw)
        if kind is float:
            return _float(raw)
        if kind is Secret:
            return Secret(raw)
        if kind is str:
            return raw
        origin = typing.get_origin(kind)
        if origin is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if origin is dict:
            _, value_kind = typing.get_args(kind)
            pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected comma-separated name=value pairs")
            return {k.strip(): _parse_text(key, source, v, value_kind) for k, v in pairs}
    except ValueError as exc:
        raise ConfigError(key, source, str(exc)) from None
    raise ConfigError(key, source, f"unsupported setting type {kind!r}")


def _int(raw: str) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,30}", text, re.ASCII):
        raise ValueError(f"expected an integer, got {_shown(raw)}")
    return int(text)


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {_shown(raw)}") from None


def _parse_toml(key: str, source: str, value: Any, kind: Any) -> Any:
    """Check a TOML value against the field's type (TOML already typed it)."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, bool, str) and type(value) is kind:
        return value
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    origin = typing.get_origin(kind)
    if origin is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if origin is tuple and isinstance(value, str):
        return _parse_text(key, source, value, kind)
    if origin is dict and isinstance(value, dict):
        _, value_kind = typing.get_args(kind)
        return {
            str(k): _parse_toml(f"{key}.{_shown_key(k)}", source, v, value_kind)
            for k, v in value.items()
        }
    # A secret given with the wrong type is still a secret: say what type it had, never what.
    got = _toml_type(value) if kind is Secret else f"{_toml_type(value)} {_shown(value)}"
    raise ConfigError(key, source, f"expected {_type_name(kind)}, got {got}")


def _toml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    return names.get(type(value), "table" if isinstance(value, dict) else "date/time")


def _type_name(kind: Any) -> str:
    if isinstance(kind, type):
        names = {str: "string", Secret: "string", int: "integer", float: "number", bool: "boolean"}
        return names.get(kind, kind.__name__)
    if isinstance(kind, types.GenericAlias):
        return "array of strings" if typing.get_origin(kind) is tuple else "table"
    return str(kind)


def _printable(value: Any) -> str:
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, tuple):
        return list(value)
    return value
