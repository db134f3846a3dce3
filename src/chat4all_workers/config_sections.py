"""The shared settings sections: what more than one role, or the process itself, reads.

Each is a frozen dataclass; each field one setting (its TOML key `section.field`; its
environment name the platform's legacy one when `env(...)` names it, else
`CHAT4ALL_<SECTION>_<FIELD>`). `Settings` (config.py) holds one of each, and loads them; a
role's own section lives with the role.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from chat4all_workers import config_checks
from chat4all_workers.config_values import Secret
from chat4all_workers.frozen import frozen


def env(name: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: the legacy environment name (`{SECTION}` in it: the section's name in
    capitals), plus any rule (`check`, `min`, ...)."""
    return {"env": name, **rules}


# Rules of the values below (see `validate`): numbers must be greater than 0 and at most
# 2**31 - 1 (integers) or 1e9 unless `min`/`max` say otherwise; `choices` lists the allowed
# values (of each entry, for a table); `check` is one of config_checks; `check_key` checks the
# names of a table's entries. Defaults are not checked: `supervisor.toml` repeats every one, and
# a test loads it.
ZERO_OK = {"min": 0}
TOPIC = {"check": config_checks.topic_name}
NON_EMPTY = {"check": config_checks.non_empty}
# The channels the platform delivers to, each with a settings section of the same name below:
# the one list (message formats, the router's `all`, the webhooks role's paths, the mocks).
CHANNELS = ("whatsapp", "instagram")
# OTP restart types; role.py `Restart` has the same three (a test keeps them equal).
RESTART_TYPES = ("permanent", "transient", "temporary")


@frozen(kw_only=True)
class KafkaSettings:
    bootstrap_servers: str = field(
        default="127.0.0.1:9092",
        metadata=env("KAFKA_BOOTSTRAP_SERVERS", check=config_checks.kafka_servers),
    )
    consumer_group: str = field(
        default="chat4all-workers", metadata=env("KAFKA_CONSUMER_GROUP", **NON_EMPTY)
    )
    auto_offset_reset: str = field(
        default="earliest",
        metadata={"env": "KAFKA_AUTO_OFFSET_RESET", "choices": ("earliest", "latest")},
    )
    client_id: str = field(default="chat4all-workers", metadata=NON_EMPTY)
    max_in_flight: int = 1000
    # Records a handler holds while it waits on an outside condition (a paused channel, a
    # recipient's pair limit: kafka/held.py `held()`) count against this bound instead of
    # max_in_flight, so they do not starve the rest; past it they count normally again.
    max_held_records: int = 10_000
    fetch_max_records: int = 500
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 30_000
    # How long the group coordinator waits for every member to rejoin a rebalance; a member
    # waits up to half of it for its revoked partitions' running handlers (kafka/rebalance.py).
    # Keep it well above session_timeout_ms / 3 (the heartbeat that notices a rebalance).
    rebalance_timeout_ms: int = 30_000
    linger_ms: int = field(default=5, metadata=ZERO_OK)
    # The producer's batch per partition, at most (aiokafka's max_batch_size). aiokafka keeps one
    # open batch per partition, and a send that finds it full waits until it has gone to Kafka
    # (one request in flight per partition, idempotence): at the library's 16 KiB, about 48
    # status records, 7 sends in 10 waited under the router's load, each a wakeup more
    # (bench/router.py). Up to Kafka's own request limit (1 MiB).
    max_batch_bytes: int = field(default=131_072, metadata={"max": 1_048_576})
    default_partitions: int = 12
    replication_factor: int = field(default=1, metadata={"max": 32767})
    dlq_retention_ms: int = field(default=7 * 24 * 3600 * 1000, metadata={"max": 2**63 - 1})
    partitions: dict[str, int] = field(
        default_factory=dict, metadata={"check_key": config_checks.topic_name}
    )
    # Per-role consumer group, replacing "<consumer_group>-<role>": e.g. {"router":
    # "message_router_group"} continues from the original workers' committed offsets. Keys are
    # role names, or DLQ_REPLAY_GROUP (checked with the registry: roles.check_role_keys).
    groups: dict[str, str] = field(default_factory=dict, metadata=NON_EMPTY)

    def group_for(self, role: str) -> str:
        """The consumer group of a consuming role (or of a tool like `dlq-replay`). The one
        derivation: the roles, `status` and `dlq replay` all ask here."""
        return self.groups.get(role) or f"{self.consumer_group}-{role}"


# The group name `dlq replay` asks `KafkaSettings.group_for` for (it reads the DLQ topics).
DLQ_REPLAY_GROUP = "dlq-replay"


@frozen(kw_only=True)
class TopicSettings:
    """Topic names; overridable so that tests and tenants can run side by side."""

    message_processing: str = field(default="message_processing", metadata=TOPIC)
    message_status_updates: str = field(default="message_status_updates", metadata=TOPIC)
    dlq: str = field(default="message_processing_dlq", metadata=TOPIC)
    file_merge_requests: str = field(default="file_merge_requests", metadata=TOPIC)
    file_upload_completed: str = field(default="file_upload_completed", metadata=TOPIC)
    message_events: str = field(default="message_events", metadata=TOPIC)
    file_events: str = field(default="file_events", metadata=TOPIC)
    conversation_events: str = field(default="conversation_events", metadata=TOPIC)
    default_events: str = field(default="default_events", metadata=TOPIC)
    # Messages users send to our WhatsApp number / Instagram account (the webhooks role).
    inbound_messages: str = field(default="inbound_messages", metadata=TOPIC)


@frozen(kw_only=True)
class PostgresSettings:
    url: Secret = field(
        default=Secret("postgresql://chat4all:chat4all@127.0.0.1:5432/chat4all"),
        metadata=env("DATABASE_URL", check=config_checks.postgres_url),
    )
    pool_min_size: int = field(default=1, metadata=ZERO_OK)
    pool_max_size: int = 10
    command_timeout_s: float = 30.0

    def problems(self) -> list[tuple[str, str]]:
        """Rules across fields: (field, problem) pairs."""
        if self.pool_min_size > self.pool_max_size:
            return [("pool_min_size", f"must not exceed pool_max_size ({self.pool_max_size})")]
        return []


@frozen(kw_only=True)
class RedisSettings:
    url: Secret = field(
        default=Secret("redis://127.0.0.1:6379/0"),
        metadata=env("REDIS_URL", check=config_checks.redis_url),
    )
    key_prefix: str = ""
    # The pool's; the auto-pipeline (autopipeline.py) holds one connection of its own besides.
    max_connections: int = 50


@frozen(kw_only=True)
class S3Settings:
    endpoint: str = field(
        default="127.0.0.1:9000", metadata=env("MINIO_ENDPOINT", check=config_checks.host_port)
    )
    access_key: Secret = field(default=Secret("chat4all"), metadata=env("MINIO_ACCESS_KEY"))
    secret_key: Secret = field(default=Secret("chat4all-secret"), metadata=env("MINIO_SECRET_KEY"))
    bucket: str = field(
        default="chat4all-files", metadata=env("MINIO_BUCKET", check=config_checks.bucket_name)
    )
    secure: bool = field(default=False, metadata=env("MINIO_SECURE"))
    region: str = field(default="us-east-1", metadata=NON_EMPTY)


@frozen(kw_only=True)
class BreakerSettings:
    # Consecutive records (not calls) that Kafka did not acknowledge within ack_timeout_s.
    failure_threshold: int = 5
    cooldown_s: float = 10.0
    # A record unacknowledged this long counts as a failure; the send keeps waiting for
    # Kafka's verdict (kafka/producer.py), so the breaker opens within about this of an outage.
    ack_timeout_s: float = 3.0


@frozen(kw_only=True)
class SupervisorSettings:
    max_restarts: int = field(default=5, metadata=ZERO_OK)
    restart_window_s: float = 60.0
    backoff_base_s: float = field(default=0.5, metadata=ZERO_OK)
    backoff_cap_s: float = 30.0
    reset_after_s: float = 300.0
    shutdown_timeout_s: float = 25.0
    loop_lag_interval_s: float = 0.5
    loop_lag_warn_s: float = 1.0


@frozen(kw_only=True)
class RoleSettings:
    # "all" is every production role of the registry (roles/__init__.py), so the list of roles
    # is written once.
    enabled: tuple[str, ...] = field(default=("all",), metadata=env("ROLES"))
    restart: dict[str, str] = field(default_factory=dict, metadata={"choices": RESTART_TYPES})


@frozen(kw_only=True)
class ObservabilitySettings:
    # Loopback unless told otherwise: the ops port serves /metrics and /readyz unauthenticated.
    # Containers bind every interface explicitly (the image, compose and Kubernetes set
    # CHAT4ALL_OBSERVABILITY_METRICS_HOST=0.0.0.0) so probes and Prometheus reach it.
    metrics_host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    # 0: a port the OS picks (tests)
    metrics_port: int = field(default=8000, metadata=env("METRICS_PORT", min=0, max=65535))
    log_level: str = field(
        default="INFO", metadata={"choices": ("DEBUG", "INFO", "WARNING", "ERROR")}
    )
    service_name: str = field(
        default="chat4all-workers", metadata=env("OTEL_SERVICE_NAME", **NON_EMPTY)
    )
    otlp_endpoint: str = field(
        default="",
        metadata=env("OTEL_EXPORTER_OTLP_ENDPOINT", check=config_checks.http_url_or_empty),
    )
    # A WARNING or ERROR repeated within this long (the same condition: logger and message,
    # numbers and ids aside, per role) is logged once, then again with the count of repeats it
    # stood for; 0 logs every one.
    log_repeat_interval_s: float = field(default=30.0, metadata=ZERO_OK)
    # A progress line per role this often (processed, rate, dead-lettered, lag, in flight); 0: none.
    progress_interval_s: float = field(default=30.0, metadata=ZERO_OK)
    # How stderr's log lines are written: "json" (the contract's JSON objects, for machines),
    # "text" (one readable line per event, for a person), "auto" (text when stderr is a
    # terminal, JSON otherwise: pipes, files and containers get JSON, as before).
    log_format: str = field(default="auto", metadata={"choices": ("auto", "text", "json")})


@frozen(kw_only=True)
class FallbackSettings:
    queue_key: str = field(default="fallback:message_queue", metadata=NON_EMPTY)
    poll_interval_s: float = field(default=10.0, metadata=env("FALLBACK_POLL_INTERVAL"))
    batch_size: int = field(default=50, metadata=env("FALLBACK_BATCH_SIZE"))
    # A backfill worker whose heartbeat is older than this is presumed dead; its taken items
    # go back to the head of the queue.
    heartbeat_ttl_s: float = 30.0


@frozen(kw_only=True)
class DeliverySettings:
    """What the router and the webhooks role share about a send, in Redis."""

    # A send's dedup marker lives this long from its claim: at most one send per (message,
    # channel) within it, however often Kafka redelivers. The webhooks role writes the
    # provider's word into it.
    dedup_ttl_s: int = 86_400
    # How long `message:provider:{channel}:{mid}` maps a provider's id back to our message (an
    # Instagram read receipt later than this is counted as unknown and ignored).
    provider_index_ttl_s: int = 86_400
    # How long a conversation window's record lives after its last write (delivery/windows.py):
    # a user who wrote within it is known (window open or closed), an older one is unknown.
    window_memory_s: int = 30 * 86_400


@frozen(kw_only=True)
class FilesSettings:
    """What the file roles (merge, gc), the router and `status` share about uploaded files."""

    # Lifetime of a presigned download URL: the completion event's (SPEC: 24 h) and a file
    # message's link, which the provider fetches; S3 signs for at most 7 days.
    download_url_expiry_s: int = field(default=24 * 3600, metadata={"max": 7 * 24 * 3600})
    # A file in MERGING longer than this is stuck (gc fails it unless a merge holds its lock;
    # the merge role's `files_stuck_merging` gauge and `status` count it).
    merging_stuck_minutes: float = 60.0


@frozen(kw_only=True)
class MetaChannelSettings:
    """What both Meta channels (sections `whatsapp`, `instagram`) are set by: the Graph API,
    the app's secrets, the pace. `{SECTION}` in an environment name is the section's
    (WHATSAPP_ACCESS_TOKEN, INSTAGRAM_ACCESS_TOKEN)."""

    base_url: str = field(
        default="https://graph.facebook.com",
        metadata=env("{SECTION}_API_BASE_URL", check=config_checks.http_url),
    )
    api_version: str = field(default="v21.0", metadata={"check": config_checks.api_version})
    access_token: Secret = field(default=Secret(""), metadata=env("{SECTION}_ACCESS_TOKEN"))
    # The Meta app's secret signs every webhook (X-Hub-Signature-256): the webhooks role checks
    # it, the mock signs with it. Empty: the channel's webhooks are refused (403).
    app_secret: Secret = field(default=Secret(""), metadata=env("{SECTION}_APP_SECRET"))
    # Chosen by us and typed into the app dashboard; Meta's verification GET echoes it.
    verify_token: Secret = field(default=Secret(""), metadata=env("{SECTION}_VERIFY_TOKEN"))
    timeout_s: float = 10.0
    # Sends per second per account, shared by every router of the deployment through Redis
    # (each channel's default below). 0 = no pacing.
    max_rate_per_s: float = field(default=0.0, metadata=ZERO_OK)
    # Per (account, recipient): a burst of pair_burst, then one per pair_interval_s (Meta
    # documents no pair limit for Instagram: off unless set). 0 = no pair pacing.
    pair_burst: int = field(default=0, metadata=ZERO_OK)
    pair_interval_s: float = field(default=0.0, metadata=ZERO_OK)


@frozen(kw_only=True)
class WhatsAppSettings(MetaChannelSettings):
    phone_number_id: str = field(default="", metadata=env("WHATSAPP_PHONE_NUMBER_ID"))
    # Per business number (Meta: 80 by default, 1,000 after an upgrade, 20 for numbers shared
    # with the WhatsApp Business app).
    max_rate_per_s: float = field(default=80.0, metadata=ZERO_OK)
    # Per (business number, recipient), Meta: about 45, then one per 6 s.
    pair_burst: int = field(default=45, metadata=ZERO_OK)
    pair_interval_s: float = field(default=6.0, metadata=ZERO_OK)

    @property
    def provider_id(self) -> str:
        """The environment's account: its phone number id."""
        return self.phone_number_id


@frozen(kw_only=True)
class InstagramSettings(MetaChannelSettings):
    user_id: str = field(default="", metadata=env("INSTAGRAM_USER_ID"))
    # Per Instagram account (Meta: 300 calls/s for text; 250 leaves headroom).
    max_rate_per_s: float = field(default=250.0, metadata=ZERO_OK)
    # Audio and video sends per second per account, paced apart from (and as well as) the
    # account's rate, shared through Redis (Meta: 10 calls/s for audio or video; 8 leaves
    # headroom; meta/limits.py SLOW_MEDIA names the types). 0 = no separate pace.
    media_rate_per_s: float = field(default=8.0, metadata=ZERO_OK)

    @property
    def provider_id(self) -> str:
        """The environment's account: its Instagram account id."""
        return self.user_id


@frozen(kw_only=True)
class AccountsSettings:
    """The sending accounts kept in PostgreSQL (accounts/): the key their tokens and app secrets
    are sealed with, and how often the directory reloads them all besides its notifications.

    The key is `ID:BASE64KEY` (32 bytes: AES-256), several comma-separated while keys rotate:
    the first seals, every one opens (`chat4all-workers accounts new-key` makes one). Set it, or
    name a file holding it (a mounted secret; read when the directory or a command opens, never
    by a process that does not need it), not both. Unset, the table's accounts are left out
    and the environment's single account is the only one.
    """

    key: Secret = field(
        default=Secret(""), metadata=env("ACCOUNTS_KEY", check=config_checks.accounts_keys)
    )
    key_file: str = field(default="", metadata=env("ACCOUNTS_KEY_FILE"))
    # The safety net under the notifications (LISTEN chat4all_accounts): a full reload this often.
    reload_interval_s: float = 30.0

    def problems(self) -> list[tuple[str, str]]:
        if self.key and self.key_file:
            return [
                (
                    "key_file",
                    "set one of accounts.key (ACCOUNTS_KEY) and accounts.key_file "
                    "(ACCOUNTS_KEY_FILE), not both",
                )
            ]
        return []
