"""Every bad setting and every refused credential, as an operator meets them on the command line:
the stated exit code, exactly one line on stderr, no traceback, and none of the distinctive
secrets planted in the environment and in `supervisor.toml` anywhere in stdout or stderr."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from harness.deployment import Deployment, free_port
from harness.stack import StackEndpoints
from tests.support import own_redis

REPO = Path(__file__).resolve().parent.parent

PG_PASSWORD = "pg-PLANTED-5e3c"
REDIS_PASSWORD = "redis-PLANTED-77a1"
S3_SECRET = "s3-PLANTED-d00d"
WA_TOKEN = "wa-PLANTED-TOKEN-91"
IG_TOKEN = "ig-PLANTED-TOKEN-92"
SECRETS = (PG_PASSWORD, REDIS_PASSWORD, S3_SECRET, WA_TOKEN, IG_TOKEN)
# A refusal must end the process at once: well under the 60 s an unreachable service is waited.
REFUSAL_WITHIN_S = 15.0

# The channel tokens in the file, the rest in the environment: both places are read and shown.
PLANTED_TOML = f"""
[whatsapp]
access_token = "{WA_TOKEN}"
[instagram]
access_token = "{IG_TOKEN}"
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    elapsed_s: float
    lines: list[str] = field(default_factory=list)


def cli(*args: str, env: dict[str, str | None], toml: str = "", tmp_path: Path) -> Run:
    """`chat4all-workers ARGS` with the planted secrets, from a directory of its own; a None in
    `env` unsets the variable (the environment wins over the file)."""
    config = tmp_path / "supervisor.toml"
    config.write_text(PLANTED_TOML + toml)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHAT4ALL_", "ROLES", "KAFKA_", "MINIO_", "DATABASE_", "REDIS_"))
    }
    planted = {
        "DATABASE_URL": f"postgresql://chat4all:{PG_PASSWORD}@127.0.0.1:5432/chat4all",
        "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        "MINIO_SECRET_KEY": S3_SECRET,
        "CHAT4ALL_CONFIG": str(config),
        "METRICS_PORT": str(free_port()),
    }
    began = time.monotonic()
    merged = {**base, **planted, **env}
    done = subprocess.run(
        [sys.executable, "-m", "chat4all_workers", *args],
        env={k: v for k, v in merged.items() if v is not None},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - began, lines)


def assert_no_secret(run: Run) -> None:
    for secret in SECRETS:
        assert secret not in run.stdout, f"{secret} on stdout:\n{run.stdout[:2000]}"
        assert secret not in run.stderr, f"{secret} on stderr:\n{run.stderr[:2000]}"


def assert_one_line(run: Run) -> str:
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert len(run.lines) == 1, run.stderr[-3000:]
    return run.lines[0]


# -- bad settings: exit 2, `chat4all-workers: configuration error: KEY (SOURCE): PROBLEM` --------

BAD_SETTINGS = [
    pytest.param(
        {"DATABASE_URL": f"postgresql://chat4all:{PG_PASSWORD}@db:notaport/chat4all"},
        "",
        "postgres.url (env DATABASE_URL): the port must be a number",
        id="postgres port not a number",
    ),
    pytest.param(
        {"DATABASE_URL": f"mysql://chat4all:{PG_PASSWORD}@db/chat4all"},
        "",
        "postgres.url (env DATABASE_URL): must start with postgresql://",
        id="postgres scheme",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgresql://chat4all:{PG_PASSWORD}/x@db/chat4all"},
        "",
        "postgres.url (env DATABASE_URL): has an unencoded",
        id="postgres password with a slash",
    ),
    pytest.param(
        {"REDIS_URL": f"http://:{REDIS_PASSWORD}@cache:6379"},
        "",
        "redis.url (env REDIS_URL): must start with redis://",
        id="redis scheme",
    ),
    pytest.param(
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache:6379/notadb"},
        "",
        "redis.url (env REDIS_URL): the database number must be a non-negative integer",
        id="redis database number",
    ),
    pytest.param(
        {"CHAT4ALL_GC_SCHEDULE": "99 99 * * *"},
        "",
        "gc.schedule (env CHAT4ALL_GC_SCHEDULE): cron minute field '99' is outside 0-59",
        id="cron",
    ),
    pytest.param(
        {},
        "[roles]\nrestart = { router = 'sometimes' }\n",
        "roles.restart.router (",
        id="restart type",
    ),
    pytest.param(
        {"CHAT4ALL_ROLES_RESTART": "nosuch=transient"},
        "",
        "roles.restart.nosuch (env CHAT4ALL_ROLES_RESTART): unknown role",
        id="restart of an unknown role",
    ),
    pytest.param(
        {},
        "[kafka]\ngroups = { routr = 'message_router_group' }\n",
        "kafka.groups.routr (",
        id="group of an unknown role",
    ),
    pytest.param(
        {"DATABASE_URL": None},
        f"[postgres]\nurl = ['postgresql://chat4all:{PG_PASSWORD}@db/chat4all']\n",
        "postgres.url (",
        id="postgres url of the wrong type",
    ),
    pytest.param(
        {"MINIO_SECRET_KEY": None},
        f"[s3]\nsecret_key = {{ key = '{S3_SECRET}' }}\n",
        "s3.secret_key (",
        id="s3 secret of the wrong type",
    ),
    pytest.param({"OUTBOX_BATCH_SIZE": "0"}, "", "must be greater than 0", id="zero batch"),
    pytest.param(
        {"KAFKA_BOOTSTRAP_SERVERS": "PLAINTEXT://kafka:9092"},
        "",
        "kafka.bootstrap_servers (env KAFKA_BOOTSTRAP_SERVERS): expected host:port",
        id="kafka with a scheme",
    ),
    pytest.param(
        {"MINIO_ENDPOINT": "http://s3:9000"}, "", "s3.endpoint (env MINIO_ENDPOINT)", id="s3 url"
    ),
    pytest.param({}, "[kafka]\nmax_inflight = 5\n", "kafka.max_inflight (", id="unknown key"),
]


@pytest.mark.parametrize(("env", "toml", "message"), BAD_SETTINGS)
@pytest.mark.parametrize("command", [("run", "--roles", "all"), ("config", "show")])
def test_cli_refuses_a_bad_setting_in_one_line_without_its_secret(
    env: dict[str, str | None], toml: str, message: str, command: tuple[str, ...], tmp_path: Path
) -> None:
    run = cli(*command, env=env, toml=toml, tmp_path=tmp_path)

    line = assert_one_line(run)
    assert run.code == 2, run.stderr
    assert line.startswith("chat4all-workers: configuration error: "), line
    assert message in line
    assert_no_secret(run)


def test_cli_names_a_wrong_typed_secret_by_its_type_only(tmp_path: Path) -> None:
    toml = f"[redis]\nurl = ['{REDIS_PASSWORD}']\n"

    run = cli("config", "show", env={"REDIS_URL": None}, toml=toml, tmp_path=tmp_path)

    line = assert_one_line(run)
    assert line.startswith("chat4all-workers: configuration error: redis.url (")
    assert line.endswith("supervisor.toml): expected string, got array")
    assert_no_secret(run)


@pytest.mark.parametrize(
    "args",
    [
        ("dlq", "replay", "--limit", "-1", "--dry-run"),
        ("dlq", "replay", "--limit", "0"),
        ("status", "--max-lag", "-5"),
        ("run", "--nonsense"),
        ("no-such-command",),
    ],
)
def test_cli_refuses_a_bad_argument_in_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    run = cli(*args, env={}, tmp_path=tmp_path)

    line = assert_one_line(run)
    assert run.code == 2
    assert line.startswith("chat4all-workers"), line
    assert line.endswith("(see --help)")


# -- what is shown: config show, masked ----------------------------------------------------------


def test_cli_config_show_masks_only_the_password_of_a_url(tmp_path: Path) -> None:
    run = cli("config", "show", env={}, tmp_path=tmp_path)

    assert run.code == 0, run.stderr
    rows = {line.split(" = ")[0].strip(): line for line in run.stdout.splitlines()}
    pg = rows["postgres.url"]
    assert "= postgresql://chat4all:***@127.0.0.1:5432/chat4all    # env DATABASE_URL" in pg
    assert "redis://:***@127.0.0.1:6379/0    # env REDIS_URL" in rows["redis.url"]
    token = rows["whatsapp.access_token"]
    assert "= ***    # " in token
    assert token.endswith("/supervisor.toml; env WHATSAPP_ACCESS_TOKEN")
    assert "= ***    # env MINIO_SECRET_KEY" in rows["s3.secret_key"]
    assert rows["kafka.linger_ms"].endswith("# default; env CHAT4ALL_KAFKA_LINGER_MS")
    assert_no_secret(run)


def test_cli_config_show_json_types_values_and_masks_secrets(tmp_path: Path) -> None:
    run = cli("config", "show", "--json", env={"OUTBOX_BATCH_SIZE": "7"}, tmp_path=tmp_path)

    doc = orjson.loads(run.stdout)
    assert doc["outbox.batch_size"] == {
        "value": 7,
        "source": "env OUTBOX_BATCH_SIZE",
        "env": "OUTBOX_BATCH_SIZE",
    }
    assert doc["postgres.url"]["value"] == "postgresql://chat4all:***@127.0.0.1:5432/chat4all"
    assert doc["roles.enabled"]["value"] == ["all"]
    assert_no_secret(run)


@pytest.mark.parametrize("command", [("config", "show"), ("roles",), ("config", "show", "--json")])
def test_cli_output_to_a_closed_pipe_ends_quietly(command: tuple[str, ...]) -> None:
    """`config show | head -1`: the reader is gone before we write; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chat4all_workers", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
    finally:
        os.close(write_end)

    assert done.returncode == 141
    assert done.stderr == ""


# -- refused credentials: exit 1 at once, one line naming the service and the reason ------------


def with_password(url: str, password: str | None, *, user: str = "") -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    auth = f"{user or parts.username or ''}:{password}@" if password is not None else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{parts.port}"))


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own that requires a password (the shared one does not), stopped after."""
    port = free_port()
    with own_redis(port, tmp_path, password="right-one"):
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"


def assert_refused(run: Run, service: str, reason: str) -> None:
    line = assert_one_line(run)
    assert run.code == 1, run.stderr
    assert run.elapsed_s < REFUSAL_WITHIN_S, f"took {run.elapsed_s:.1f}s"
    message = orjson.loads(line)["message"]
    assert message.startswith(f"{service}: "), message
    assert reason in message
    assert_no_secret(run)


@pytest.mark.stack
@pytest.mark.parametrize(
    "command", [("run", "--roles", "status_updater"), ("db", "migrate"), ("run-once", "gc")]
)
def test_cli_exits_at_once_when_postgres_refuses_the_password(
    stack: StackEndpoints, command: tuple[str, ...], tmp_path: Path
) -> None:
    env = {"DATABASE_URL": with_password(stack.database_url, PG_PASSWORD)}

    run = cli(*command, env={**stack_env(stack), **env}, tmp_path=tmp_path)

    assert_refused(run, "postgres", 'password authentication failed for user "chat4all"')


@pytest.mark.stack
def test_cli_exits_at_once_when_redis_refuses_the_password(
    stack: StackEndpoints, redis_with_password: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": with_password(redis_with_password, REDIS_PASSWORD)}

    run = cli("run", "--roles", "backfill", env={**stack_env(stack), **env}, tmp_path=tmp_path)

    assert_refused(run, "redis", "invalid username-password pair")


@pytest.mark.stack
def test_cli_exits_at_once_when_redis_wants_a_password_and_has_none(
    stack: StackEndpoints, redis_with_password: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_with_password}

    run = cli("run", "--roles", "backfill", env={**stack_env(stack), **env}, tmp_path=tmp_path)

    assert_refused(run, "redis", "the server requires a password, and the URL gives none")


@pytest.mark.stack
@pytest.mark.parametrize("command", [("run", "--roles", "gc"), ("run-once", "gc")])
def test_cli_exits_at_once_when_s3_refuses_the_secret(
    stack: StackEndpoints, command: tuple[str, ...], tmp_path: Path
) -> None:
    env = {**stack_env(stack), "MINIO_SECRET_KEY": S3_SECRET}

    run = cli(*command, env=env, tmp_path=tmp_path)

    assert_refused(run, "s3", "AccessDenied")


@pytest.mark.parametrize(
    "command",
    [
        ("send", "--text", "hello", "--channel", "whatsapp", "--to", "whatsapp=+5511999990000"),
        ("accounts", "list"),
        ("db", "migrate"),
    ],
)
def test_cli_names_an_unreachable_postgres_and_its_address_in_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    port = free_port()  # nobody listens
    env: dict[str, str | None] = {
        "DATABASE_URL": f"postgresql://chat4all:{PG_PASSWORD}@127.0.0.1:{port}/chat4all"
    }

    run = cli(*command, env=env, tmp_path=tmp_path)

    line = assert_one_line(run)
    assert run.code == 1, run.stderr
    message = orjson.loads(line)["message"]
    assert message.startswith(
        f"postgres: unreachable at postgresql://chat4all:***@127.0.0.1:{port}/chat4all: "
    ), message
    assert_no_secret(run)


@pytest.mark.parametrize(
    ("roles", "port_env", "server", "settings"),
    [
        (
            "webhooks",
            "CHAT4ALL_WEBHOOKS_PORT",
            "webhooks",
            "webhooks.host, webhooks.port; env CHAT4ALL_WEBHOOKS_HOST, CHAT4ALL_WEBHOOKS_PORT",
        ),
        (
            "whatsapp_mock",
            "CHAT4ALL_MOCKS_WHATSAPP_PORT",
            "whatsapp_mock",
            "mocks.host, mocks.whatsapp_port; "
            "env CHAT4ALL_MOCKS_HOST, CHAT4ALL_MOCKS_WHATSAPP_PORT",
        ),
        (
            "gc",
            "METRICS_PORT",
            "operations",
            "observability.metrics_host, observability.metrics_port; "
            "env CHAT4ALL_OBSERVABILITY_METRICS_HOST, METRICS_PORT",
        ),
    ],
    ids=["webhooks", "mock", "operations"],
)
def test_cli_a_port_another_process_holds_stops_the_start_in_one_line_naming_its_settings(
    roles: str, port_env: str, server: str, settings: str, tmp_path: Path
) -> None:
    # Bound before anything connects: no service is reachable here, and none is waited for.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        run = cli("run", "--roles", roles, env={port_env: str(port)}, tmp_path=tmp_path)

    line = assert_one_line(run)
    assert run.code == 1, run.stderr
    assert run.elapsed_s < REFUSAL_WITHIN_S, f"took {run.elapsed_s:.1f}s"
    assert orjson.loads(line)["message"] == (
        f"{server}: cannot listen on 127.0.0.1:{port} ({settings}): address already in use"
    )


@pytest.mark.stack
def test_cli_status_reports_a_refusal_without_a_secret(
    stack: StackEndpoints, tmp_path: Path
) -> None:
    env = {**stack_env(stack), "DATABASE_URL": with_password(stack.database_url, PG_PASSWORD)}

    run = cli("status", "--workers", f"http://127.0.0.1:{free_port()}", env=env, tmp_path=tmp_path)

    assert run.code == 1
    assert 'postgres: password authentication failed for user "chat4all"' in run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    assert_no_secret(run)


@pytest.mark.stack
def test_cli_dlq_replay_and_roles_print_no_secret(deployment: Deployment, tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        "KAFKA_BOOTSTRAP_SERVERS": deployment.stack.kafka_bootstrap,
        "KAFKA_CONSUMER_GROUP": deployment.group,
        "CHAT4ALL_TOPICS_DLQ": deployment.topics["dlq"],
    }

    for args in (("dlq", "replay", "--dry-run"), ("roles",)):
        run = cli(*args, env=env, tmp_path=tmp_path)
        assert run.code == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert_no_secret(run)


def stack_env(stack: StackEndpoints) -> dict[str, str | None]:
    """The stack's real addresses and credentials (a test then plants a wrong one)."""
    return dict(stack.as_environ())


# -- SIGTERM while start-up still waits ----------------------------------------------------------


def test_cli_sigterm_while_waiting_for_a_dependency_exits_0(tmp_path: Path) -> None:
    """Redis not there yet: start-up waits (60 s) for it; an orchestrator's SIGTERM meanwhile
    is a clean stop, not a kill (-15)."""
    log = tmp_path / "worker.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHAT4ALL_", "REDIS_"))},
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nobody listens
        "METRICS_PORT": str(free_port()),
    }
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "chat4all_workers", "run", "--roles", "backfill"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 30
        while b"waiting for redis" not in log.read_bytes():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert code == 0, log.read_text()
    assert b"Traceback" not in log.read_bytes()
