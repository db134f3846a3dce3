"""The shipping artifacts (Dockerfile, docker-compose.yml, deploy/) against the code they ship.

They are text the code never reads, so nothing else notices when a role is renamed, a setting's
environment name changes or a metric disappears: these tests do, without any service.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aioprometheus.collectors import Histogram

from chat4all_workers.cli import build_parser
from chat4all_workers.observability.metrics import Metrics
from chat4all_workers.roles import CATALOGUE, REGISTRY, load_settings
from chat4all_workers.roles.webhooks import WebhookSettings
from tests.promql import (
    ALERTS,
    alert_queries,
    dashboard_queries,
    label_names,
    metric_names,
    operands,
    template_labels,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
IMAGE = "chat4all-workers"
# supervisor.toml binds the ops port to loopback; every container must bind all interfaces.
METRICS_HOST_ENV = "CHAT4ALL_OBSERVABILITY_METRICS_HOST"

# Environment the deployment files may set besides the settings' own names: the config file's path
# and the OpenTelemetry variables the SDK reads itself.
EXTRA_ENV = {"CHAT4ALL_CONFIG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"}
# Set in the image for Python and pip, not for us.
IMAGE_ONLY_ENV = re.compile(r"^(PYTHON|PIP_)")
# Prometheus's own series, usable in alerts next to what the workers export.
PROMETHEUS_SERIES = {"up"}

PRODUCTION_SERVICES = {n for n, s in REGISTRY.items() if s.run is not None} - {
    n for n, e in CATALOGUE.items() if e.dev_only
}
PERIODIC = {n for n, s in REGISTRY.items() if s.run_once is not None}
DEV_ONLY = {n for n, e in CATALOGUE.items() if e.dev_only}


def known_env() -> set[str]:
    return {row.env for row in load_settings({}).describe()} | EXTRA_ENV


def exported_metrics() -> set[str]:
    names = set()
    for name, collector in Metrics().registry.collectors.items():
        names.add(name)
        if isinstance(collector, Histogram):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def roles_in(value: str) -> list[str]:
    """Role names of a ROLES value; `all` is the CLI's keyword, not a role."""
    return [r.strip() for r in value.split(",") if r.strip() and r.strip() != "all"]


def assert_cli_accepts(argv: list[str], where: str) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `chat4all-workers {shlex.join(argv)}` is not a valid command")
    if args.command == "run-once":
        assert args.role in PERIODIC, f"{where}: run-once {args.role}: not a periodic role"


# --- docker-compose.yml --------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    """Parsed once per run (the tests only read it)."""
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def our_services() -> dict[str, dict[str, Any]]:
    """The compose services that run this project's image."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if str(svc.get("image", "")).split(":")[0] == IMAGE
    }


def test_compose_roles_exist_in_the_registry() -> None:
    for name, svc in our_services().items():
        for role in roles_in(svc["environment"].get("ROLES", "")):
            assert role in REGISTRY, f"compose service {name}: unknown role {role!r}"


def test_compose_runs_every_production_role() -> None:
    running = {
        role
        for svc in our_services().values()
        for role in roles_in(svc["environment"].get("ROLES", ""))
    }
    assert running >= PRODUCTION_SERVICES


def test_compose_dev_roles_only_under_the_dev_profile() -> None:
    for name, svc in our_services().items():
        if set(roles_in(svc["environment"].get("ROLES", ""))) & DEV_ONLY:
            assert svc.get("profiles") == ["dev"], f"compose service {name} must be profile dev"


def test_compose_env_names_are_settings() -> None:
    known = known_env()
    for name, svc in our_services().items():
        unknown = set(svc["environment"]) - known
        assert not unknown, f"compose service {name} sets unknown variables {sorted(unknown)}"


def test_compose_workers_bind_the_ops_port_on_every_interface() -> None:
    for name, svc in our_services().items():
        assert svc["environment"].get(METRICS_HOST_ENV) == "0.0.0.0", name


def test_compose_commands_are_cli_commands() -> None:
    for name, svc in our_services().items():
        assert_cli_accepts(list(svc.get("command", ["run"])), f"compose service {name}")


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            yield keyword.upper(), rest.strip()


def test_dockerfile_env_names_are_settings() -> None:
    known = known_env()
    names = {
        pair.split("=", 1)[0]
        for keyword, rest in dockerfile_instructions()
        if keyword == "ENV"
        for pair in shlex.split(rest)
    }
    unknown = {n for n in names if not IMAGE_ONLY_ENV.match(n)} - known
    assert not unknown, f"Dockerfile sets unknown variables {sorted(unknown)}"


def test_dockerfile_ships_the_config_where_chat4all_config_points() -> None:
    instructions = list(dockerfile_instructions())
    env = dict(
        pair.split("=", 1) for kw, rest in instructions if kw == "ENV" for pair in shlex.split(rest)
    )
    copies = [rest.split() for kw, rest in instructions if kw == "COPY"]
    assert ["supervisor.toml", env["CHAT4ALL_CONFIG"]] in copies


def test_dockerfile_binds_the_ops_port_on_every_interface() -> None:
    env = dict(
        pair.split("=", 1)
        for kw, rest in dockerfile_instructions()
        if kw == "ENV"
        for pair in shlex.split(rest)
    )
    assert env[METRICS_HOST_ENV] == "0.0.0.0"


def test_dockerfile_logs_the_contracts_json_even_on_a_terminal() -> None:
    env = dict(
        pair.split("=", 1)
        for kw, rest in dockerfile_instructions()
        if kw == "ENV"
        for pair in shlex.split(rest)
    )
    assert env["CHAT4ALL_OBSERVABILITY_LOG_FORMAT"] == "json"


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = [json.loads(rest) for kw, rest in dockerfile_instructions() if kw == "ENTRYPOINT"]
    assert entrypoints == [[IMAGE]]
    assert IMAGE in scripts


# --- deploy/k8s ----------------------------------------------------------------------------------


@functools.cache
def k8s_objects() -> list[dict[str, Any]]:
    """Parsed once per run: every pod's env lookup reads it again (the tests only read it)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / resource).read_text())
        if doc
    ]


def k8s_find(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Deployment":
            yield where, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield where, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container_env(pod: dict[str, Any]) -> dict[str, str]:
    """Every variable a pod's container gets, from env and from envFrom ConfigMaps and Secrets."""
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= k8s_find("ConfigMap", source["configMapRef"]["name"])["data"]
        if "secretRef" in source:
            env |= k8s_find("Secret", source["secretRef"]["name"])["stringData"]
    return env


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_k8s_roles_exist_in_the_registry() -> None:
    for where, pod in pod_specs():
        for role in roles_in(container_env(pod).get("ROLES", "")):
            assert role in REGISTRY, f"{where}: unknown role {role!r}"


def test_k8s_commands_are_cli_commands() -> None:
    for where, pod in pod_specs():
        (container,) = pod["containers"]
        assert_cli_accepts(list(container.get("args", ["run"])), where)


def test_k8s_deploys_every_production_role_and_schedules_every_periodic_one() -> None:
    deployed, scheduled = set(), set()
    for where, pod in pod_specs():
        (container,) = pod["containers"]
        if where.startswith("Deployment/"):
            deployed |= set(roles_in(container_env(pod)["ROLES"]))
        elif container["args"][0] == "run-once":
            scheduled.add(container["args"][1])
    assert deployed | scheduled >= PRODUCTION_SERVICES
    assert scheduled == PERIODIC


def test_k8s_env_names_are_settings() -> None:
    known = known_env()
    for where, pod in pod_specs():
        unknown = set(container_env(pod)) - known
        assert not unknown, f"{where} sets unknown variables {sorted(unknown)}"


def test_k8s_grace_period_outlasts_the_drain() -> None:
    settings = load_settings({}, ROOT / "supervisor.toml")
    for where, pod in pod_specs():
        if where.startswith("Deployment/"):
            grace = pod["terminationGracePeriodSeconds"]
            assert grace > settings.supervisor.shutdown_timeout_s, where


def test_k8s_probes_hit_the_operations_port() -> None:
    port = load_settings({}).observability.metrics_port
    for where, pod in pod_specs():
        if not where.startswith("Deployment/"):
            continue
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        ready, alive = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        assert (ready["path"], ports[ready["port"]]) == ("/readyz", port), where
        assert (alive["path"], ports[alive["port"]]) == ("/healthz", port), where


def test_k8s_deployments_bind_the_ops_port_on_every_interface() -> None:
    for where, pod in pod_specs():
        if where.startswith("Deployment/"):
            assert container_env(pod).get(METRICS_HOST_ENV) == "0.0.0.0", where


def test_make_run_binds_the_ops_port_to_loopback() -> None:
    settings = load_settings({}, ROOT / "supervisor.toml")
    assert settings.observability.metrics_host == "127.0.0.1"
    assert load_settings({}).observability.metrics_host == "127.0.0.1"


def test_k8s_pods_run_as_non_root() -> None:
    for where, pod in pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_k8s_configmap_is_supervisor_toml() -> None:
    configmap = k8s_find("ConfigMap", "chat4all-workers-config")
    assert configmap["data"]["supervisor.toml"] == (ROOT / "supervisor.toml").read_text(), (
        "deploy/k8s/configmap.yaml is stale: run scripts/k8s-configmap"
    )


# --- the webhooks port: the one that takes requests from outside --------------------------------

WEBHOOKS_HOST_ENV = "CHAT4ALL_WEBHOOKS_HOST"


def webhooks_pods() -> list[tuple[str, dict[str, Any]]]:
    return [
        (where, pod)
        for where, pod in pod_specs()
        if "webhooks" in roles_in(container_env(pod).get("ROLES", ""))
    ]


def test_k8s_webhooks_service_and_ingress_reach_the_webhooks_port() -> None:
    port = load_settings({}).section(WebhookSettings).port
    service = k8s_find("Service", "chat4all-webhooks")
    ((where, pod),) = webhooks_pods()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    labels = k8s_find("Deployment", where.split("/", 1)[1])["spec"]["template"]["metadata"]
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == port
    assert service["spec"]["selector"].items() <= labels["labels"].items()
    (rule,) = k8s_find("Ingress", "chat4all-webhooks")["spec"]["rules"]
    backends = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert backends == {"/webhooks/": {"name": "chat4all-webhooks", "port": {"name": "webhooks"}}}


def test_containers_bind_the_webhooks_port_on_every_interface() -> None:
    """supervisor.toml binds it to loopback (`make run` exposes nothing)."""
    assert load_settings({}, ROOT / "supervisor.toml").section(WebhookSettings).host == (
        "127.0.0.1"
    )
    for where, pod in webhooks_pods():
        assert container_env(pod).get(WEBHOOKS_HOST_ENV) == "0.0.0.0", where
    for name, svc in our_services().items():
        if "webhooks" in roles_in(svc["environment"].get("ROLES", "")):
            assert svc["environment"].get(WEBHOOKS_HOST_ENV) == "0.0.0.0", name
            port = load_settings({}).section(WebhookSettings).port
            assert f"127.0.0.1:{port}:{port}" in svc["ports"], name
    env = dict(
        pair.split("=", 1)
        for kw, rest in dockerfile_instructions()
        if kw == "ENV"
        for pair in shlex.split(rest)
    )
    assert env[WEBHOOKS_HOST_ENV] == "0.0.0.0"


# --- metrics in the dashboard and the alerts -----------------------------------------------------


def alert_expressions() -> list[str]:
    return [q.expr for q in alert_queries()]


def dashboard_expressions() -> list[str]:
    return [q.expr for q in dashboard_queries()]


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (role, le) (rate(a_bucket{worker=~"$w"}[5m])))'
        " > 1 and on (role) b unless max(c offset 5m) > bool 2"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def test_label_names_reads_matchers_and_groupings() -> None:
    expr = 'sum by (role, le) (rate(a{worker=~"$w", channel!="x,y"}[5m])) > on (role) b'
    assert label_names(expr) == {"role", "le", "worker", "channel"}


def test_template_labels_reads_legends_and_annotations() -> None:
    assert template_labels("{{role}} {{ outcome }} p99") == {"role", "outcome"}
    assert template_labels("{{ $labels.topic }} is {{ $value | humanize }}") == {"topic"}


def test_operands_split_an_alert_into_what_it_compares() -> None:
    expr = "sum by (t) (max(a)) > 1000\nand\nsum by (t) (delta(b[10m])) > 0"
    assert operands(expr) == ["sum by (t) (max(a))", "sum by (t) (delta(b[10m]))"]
    assert operands("max by (i) (c) == 3") == ["max by (i) (c)"]
    assert operands("(x > 1) or y") == ["(x > 1)", "y"]


def test_dashboard_uses_only_exported_metrics() -> None:
    used = {name for expr in dashboard_expressions() for name in metric_names(expr)}
    assert used - exported_metrics() == set()


def test_dashboard_shows_the_operating_metrics() -> None:
    used = {name for expr in dashboard_expressions() for name in metric_names(expr)}
    assert used >= {
        "messages_processed_total",
        "worker_processing_duration_seconds_bucket",
        "dlq_messages_total",
        "kafka_consumer_lag",
        "outbox_pending_events",
        "redis_fallback_queue_length",
        "circuit_breaker_state",
        "supervisor_restarts_total",
        "event_loop_lag_seconds",
        "webhook_requests_total",
        "webhook_lag_seconds_bucket",
    }


def test_alerts_use_only_exported_metrics() -> None:
    used = {name for expr in alert_expressions() for name in metric_names(expr)}
    assert used - exported_metrics() - PROMETHEUS_SERIES == set()


def promtool() -> str:
    """Debian's `prometheus` package brings it; `make check`/`make test` install it."""
    path = shutil.which("promtool")
    assert path is not None, "promtool missing: run `scripts/devstack install prometheus`"
    return path


def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_as_their_unit_tests_expect() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_role_compose_runs() -> None:
    """deploy/prometheus/prometheus.yml names the compose services to scrape by hand: it must
    name exactly the roles of the registry (once it lacked `webhooks`, and its panels and alerts
    had no data under docker compose)."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    scraped = {name for sd in job["dns_sd_configs"] for name in sd["names"]}
    services = set(yaml.safe_load(COMPOSE.read_text())["services"])

    assert scraped == set(CATALOGUE)
    assert scraped <= services
